"""The Redis sandbox against real redis-server processes: replica in sync, clean stop, log tails."""

from __future__ import annotations

import os

import pytest
import redis
from pgenv import workdir

from drkit.sandbox import SandboxError, port_is_free
from drkit.sandbox.redis import start_redis


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_primary_and_replica_in_sync_then_stop_leaves_nothing():
    inst = start_redis(workdir("redis-sbx"), replica=True, password="s3cret-pw")
    try:
        assert "s3cret-pw" not in inst.url and "s3cret-pw" not in repr(inst)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=inst.host, port=inst.port).ping()
        with inst.client() as c:
            c.set("k", "v1")
            c.rpush("l", *range(100))
            assert c.wait(1, 10_000) == 1
        assert inst.replica is not None
        with inst.replica.client() as r:
            assert r.get("k") == b"v1"
            assert r.llen("l") == 100
            assert r.info("replication")["role"] == "slave"
    finally:
        pids, ports = [inst.pid, inst.replica.pid], [inst.port, inst.replica.port]
        inst.stop()
    assert all(_gone(p) for p in pids)
    assert all(port_is_free(p) for p in ports)


def test_startup_failure_reports_log_tail():
    with pytest.raises(SandboxError) as err:
        start_redis(workdir("redis-bad"), settings={"maxmemory-policy": "no-such-policy"})
    assert "log tail" in str(err.value)
    assert "maxmemory-policy" in str(err.value)  # redis-server's own complaint


def test_aof_with_timestamps_as_asked():
    inst = start_redis(workdir("redis-aof"), settings={"appendonly": "yes", "aof-timestamp-enabled": "yes"})
    try:
        with inst.client() as c:
            c.set("a", "1")
            assert c.config_get("aof-timestamp-enabled")["aof-timestamp-enabled"] == "yes"
        assert list((inst.data_dir / "appendonlydir").glob("*.manifest"))
    finally:
        inst.stop()
