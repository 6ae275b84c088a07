"""The Redis dumper end to end against real redis-server processes and a real repository.

Every test writes data, backs it up through the CLI, restores, and compares what the restored
server holds with what was committed before the snapshot.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml
from pgenv import DRKIT, workdir

from drkit.repository.manifest import parse_iso
from drkit.sandbox.redis import RedisInstance, start_redis

PASSWORD = "pw-" + os.urandom(6).hex()


@dataclass
class RedisEnv:
    root: Path
    config_path: Path
    primary: RedisInstance
    others: list[RedisInstance] = field(default_factory=list)
    started_pids: list[int] = field(default_factory=list)

    def drkit(self, *args: str, check: bool = True, timeout: float = 600,
              env: dict[str, str] | None = None, max_file_size: int | None = None) -> subprocess.CompletedProcess[str]:
        def limit() -> None:  # RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))

        proc = subprocess.run([DRKIT, "--config", str(self.config_path), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "REDIS_PW": PASSWORD, **(env or {})},
                              preexec_fn=limit if max_file_size is not None else None)
        if check and proc.returncode != 0:
            raise AssertionError(f"drkit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        assert PASSWORD not in proc.stdout + proc.stderr
        return proc

    def configure(self, **sources: dict) -> None:
        cfg = yaml.safe_load(self.config_path.read_text())
        cfg["sources"].update(sources)
        self.config_path.write_text(yaml.safe_dump(cfg))

    def close(self) -> None:
        for pid in self.started_pids:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        for inst in [self.primary, *self.others]:
            inst.stop()


@contextmanager
def redis_env(root: Path, primary: RedisInstance, **sources: dict) -> Iterator[RedisEnv]:
    """A fresh key, local repository (``drkit init``) and config with ``sources`` around ``primary``;
    stops every server when done, also when the setup fails (no server is left behind)."""
    env = RedisEnv(root, root / "drkit.yaml", primary)
    try:
        key = root / "master.key"
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o600)
        (root / "repo").mkdir()
        env.config_path.write_text(yaml.safe_dump({
            "repository": {"url": f"file://{root / 'repo'}"},
            "encryption": {"key_file": str(key)},
            "sources": sources,
        }))
        env.drkit("init")
        yield env
    finally:
        env.close()


@pytest.fixture
def renv():
    root = workdir("redis-dump")
    primary = start_redis(root / "redis", replica=True, password=PASSWORD,
                          settings={"hash-max-listpack-entries": 64,
                                    "repl-ping-replica-period": 1})  # followers see a PING a second
    with redis_env(
        root, primary,
        cache={"type": "redis", "url": primary.url, "password_env": "REDIS_PW"},
        **{"cache-replica": {"type": "redis", "url": primary.replica.url, "password_env": "REDIS_PW"},
           "cache-local": {"type": "redis", "url": primary.url, "password_env": "REDIS_PW",
                           "data_dir": str(primary.data_dir)}},
    ) as env:
        yield env


def populate(c: redis.Redis, n: int = 2000) -> None:
    """Every data type, several encodings, TTLs, two databases."""
    c.set("s:int", 12345)
    c.set("s:bin", bytes(range(256)))
    c.set("s:long", "x" * 5000)  # LZF-compressed in the RDB
    for i in range(n):
        c.set(f"k:{i}", f"value-{i}-" + "y" * (i % 50))
    c.rpush("l:small", *range(10))
    c.rpush("l:big", *[f"item-{i}" * 3 for i in range(20000)])  # several quicklist nodes
    c.hset("h:small", mapping={f"f{i}": i for i in range(10)})
    c.hset("h:big", mapping={f"f{i}": "v" * 20 for i in range(500)})  # hashtable
    c.sadd("set:int", *range(100))  # intset
    c.sadd("set:str", *[f"m{i}" for i in range(50)])  # listpack
    c.sadd("set:big", *[f"m{i}" for i in range(2000)])  # hashtable
    c.zadd("z:small", {f"m{i}": i / 3 for i in range(10)})
    c.zadd("z:big", {f"m{i}": i * 1.5 for i in range(1000)})  # skiplist
    for i in range(300):
        c.xadd("stream", {"n": i, "payload": "p" * 10})
    c.xgroup_create("stream", "g1", id="0")
    c.xgroup_create("stream", "g2", id="$")
    c.xreadgroup("g1", "alice", {"stream": ">"}, count=5)
    c.xreadgroup("g1", "bob", {"stream": ">"}, count=3)
    c.pfadd("hll", *[f"u{i}" for i in range(5000)])
    c.setbit("bits", 100_000, 1)
    c.setbit("bits", 7, 1)
    c.set("ttl:long", "stays", ex=3600)
    c.set("ttl:short", "goes", px=120_000)
    c.execute_command("FUNCTION", "LOAD", "#!lua name=drkitlib\nredis.register_function('drkit_echo', "
                      "function(keys, args) return args[1] end)")
    c.execute_command("SELECT", 3)
    c.set("db3:key", "in db 3")
    c.hset("db3:h", "a", "b")
    c.execute_command("SELECT", 0)


def snapshot(c: redis.Redis) -> dict[tuple[int, bytes], tuple[bytes, bytes | None]]:
    """(db, key) -> (type, canonical contents) for every key in dbs 0-15; compared across servers."""
    out: dict[tuple[int, bytes], tuple[bytes, bytes | None]] = {}
    ck = c.connection_pool.connection_kwargs
    kw = {k: ck.get(k) for k in ("host", "port", "username", "password")}
    for db in range(16):
        d = redis.Redis(**{**kw, "db": db})
        for key in d.scan_iter(count=1000):
            t = d.type(key)
            if t == b"string":
                v = repr(d.get(key)).encode()
            elif t == b"list":
                v = repr(d.lrange(key, 0, -1)).encode()
            elif t == b"hash":
                v = repr(sorted(d.hgetall(key).items())).encode()
            elif t == b"set":
                v = repr(sorted(d.smembers(key))).encode()
            elif t == b"zset":
                v = repr(d.zrange(key, 0, -1, withscores=True)).encode()
            elif t == b"stream":
                groups = d.xinfo_groups(key)
                pend = {g["name"]: d.xpending_range(key, g["name"], "-", "+", 1000) for g in groups}
                v = repr((d.xrange(key), [(g["name"], g["last-delivered-id"], g["pending"]) for g in groups],
                          [(n, [(p["message_id"], p["consumer"]) for p in ps]) for n, ps in sorted(pend.items())]
                          )).encode()
            else:
                v = None
            out[(db, key)] = (t, v)
        d.close()
    return out


def ttls(c: redis.Redis) -> dict[bytes, int]:
    return {k: c.pttl(k) for k in (b"ttl:long", b"ttl:short")}


@pytest.mark.parametrize("source", ["cache", "cache-replica", "cache-local"])
def test_full_backup_round_trips_every_type(renv: RedisEnv, source: str):
    with renv.primary.client() as c:
        populate(c)
        assert c.wait(1, 10_000) == 1
        before = snapshot(c)
    assert len(before) > 2000
    out = json.loads(renv.drkit("backup", source, "--json").stdout)
    meta = out["metadata"]
    assert meta["method"] == ("bgsave" if source == "cache-local" else "psync")
    assert meta["rdb_checksummed"] and meta["redis_version"].startswith("7.")
    assert meta["role"] == ("slave" if source == "cache-replica" else "master")
    # Restore into a fresh directory and start a server on it.
    target = renv.root / f"restored-{source}"
    no_sync = ["--no-sync"] if source == "cache-replica" else []  # the same bytes, not waited for on disk
    res = json.loads(renv.drkit("restore", source, "--backup", out["id"], "--target-dir", str(target),
                                "--start", "--json", *no_sync).stdout)
    renv.started_pids.append(res["pid"])
    assert res["durable"] is (not no_sync)
    with redis.Redis(port=res["port"]) as r:
        after = snapshot(r)
        assert after == before
        assert r.fcall("drkit_echo", 0, "hi") == b"hi"  # the function library came back
        assert 3000 * 1000 < r.pttl("ttl:long") <= 3600 * 1000


def test_restore_into_running_instance_refuses_non_empty_and_keeps_ttls_relative(renv: RedisEnv):
    with renv.primary.client() as c:
        populate(c, 200)
        c.set("ttl:short", "goes", px=15_000)
        before = snapshot(c)
    backup = json.loads(renv.drkit("backup", "cache", "--json").stdout)
    with renv.primary.client() as c:  # ttl:short expires on the source; at the snapshot it was alive
        deadline = time.monotonic() + 30
        while c.exists("ttl:short") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not c.exists("ttl:short")
    target = start_redis(renv.root / "target", password="target-pw")
    renv.others.append(target)
    with target.client() as t:
        t.set("someone-elses", "data")
    args = ["restore", "cache", "--backup", backup["id"], "--to", target.url, "--to-password-env", "TPW", "--json"]
    refused = renv.drkit(*args, check=False, env={"TPW": "target-pw"})
    assert refused.returncode != 0 and "not empty" in refused.stderr and "--flush" in refused.stderr
    meaningless = renv.drkit(*args, "--flush", "--no-sync", check=False, env={"TPW": "target-pw"})
    assert meaningless.returncode == 2 and "--no-sync applies to --target-dir" in meaningless.stderr
    with target.client() as t:
        assert t.get("someone-elses") == b"data"  # nothing was touched
    done = json.loads(renv.drkit(*args, "--flush", env={"TPW": "target-pw"}).stdout)
    assert done["keys"] == len(before)
    with target.client() as t:
        # The short TTL key is back with what it had left at the snapshot, not dropped.
        left = t.pttl("ttl:short")
        assert 0 < left <= 15_000
        assert snapshot(t) == before


def test_point_in_time_after_expiry_drops_keys_and_outside_window_refused(renv: RedisEnv):
    with renv.primary.client() as c:
        c.set("a", 1)
        c.set("soon", "x", px=20_000)
    b1 = json.loads(renv.drkit("backup", "cache", "--json").stdout)
    listing = json.loads(renv.drkit("list", "cache", "--json").stdout)[0]
    points = listing["restore_points"]
    assert [(p["kind"], p["backup"], p["needs"]["manifests"]) for p in points] == [("backup", b1["id"], [b1["id"]])]
    assert parse_iso(points[0]["start"]) == parse_iso(points[0]["end"]) == parse_iso(b1["metadata"]["snapshot_time"])
    assert listing["window"]["start"] == points[0]["start"]
    # A time that is not a restore point is refused with the nearest point named; nothing created.
    target = renv.root / "never"
    bad = renv.drkit("restore", "cache", "--point-in-time", "2001-01-01T00:00:00Z", "--target-dir", str(target),
                     check=False)
    assert bad.returncode == 8 and "outside the recoverable window" in bad.stderr
    assert not target.exists()
    # Exactly at the snapshot: 'soon' is restored with the TTL it had left then.
    r = json.loads(renv.drkit("restore", "cache", "--point-in-time", points[0]["start"], "--target-dir",
                              str(renv.root / "at"), "--start", "--json").stdout)
    renv.started_pids.append(r["pid"])
    assert r["keys"] == 2 and r["keys_expired_by_then"] == 0
    with redis.Redis(port=r["port"]) as restored:
        assert restored.get("a") == b"1"
        assert 0 < restored.pttl("soon") <= 20_000


def test_truncated_or_corrupt_snapshot_is_detected_and_nothing_committed(renv: RedisEnv, tmp_path):
    from drkit.dumpers.redis.rdb import RdbError, ValidatingReader

    with renv.primary.client() as c:
        populate(c, 100)
        c.save()
    data = (renv.primary.data_dir / "dump.rdb").read_bytes()
    import io

    for bad in (data[:-20], data[:-9] + bytes([data[-9] ^ 1]) + data[-8:], data[:100]):
        with pytest.raises(RdbError):
            v = ValidatingReader(io.BytesIO(bad))
            while v.read(65536):
                pass
    # A corrupt stored snapshot is named at restore, and the target left empty.
    b = json.loads(renv.drkit("backup", "cache", "--json").stdout)
    packs = sorted((renv.root / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size)
    victim = [p for p in packs if p.is_file()][-1]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    target = renv.root / "corrupt"
    proc = renv.drkit("restore", "cache", "--backup", b["id"], "--target-dir", str(target), check=False)
    assert proc.returncode == 5, proc.stderr
    assert target.exists() and not any(target.iterdir())


def test_wrong_password_and_unreachable_server(renv: RedisEnv):
    before = sorted(p.name for p in (renv.root / "repo").rglob("*"))
    proc = renv.drkit("backup", "cache", check=False, env={"REDIS_PW": "wrong"})
    assert proc.returncode == 10 and "credentials" in proc.stderr
    renv.configure(gone={"type": "redis", "url": "redis://127.0.0.1:1"})
    proc = renv.drkit("backup", "gone", check=False)
    assert proc.returncode == 10 and "127.0.0.1:1" in proc.stderr
    assert sorted(p.name for p in (renv.root / "repo").rglob("*")) == before
    renv.configure(leaky={"type": "redis", "url": f"redis://:{PASSWORD}@127.0.0.1:6379"})
    proc = renv.drkit("list", check=False)
    assert proc.returncode == 2 and "password" in proc.stderr


def test_bad_chunk_mid_snapshot_is_named_and_the_target_left_empty(renv: RedisEnv):
    """The restore streams chunk by chunk into dump.rdb: a target disk that refuses the writes, a
    chunk that fails authentication half way through, or a pack that is gone, stops it with a
    non-zero exit that says what happened (exit 5 naming the object for the last two), and the
    partly written file is not left behind."""
    from drkit.config import load_config
    from drkit.ops import open_repository
    from drkit.repository.format import pack_key

    written = {f"big:{i}".encode(): os.urandom(10_000) for i in range(800)}  # 8 MB: several chunks
    with renv.primary.client() as c:
        pipe = c.pipeline(transaction=False)
        for i, (k, v) in enumerate(written.items()):
            pipe.set(k, v, ex=3600 if i % 7 == 0 else None)
        pipe.execute()
    b = json.loads(renv.drkit("backup", "cache", "--json").stdout)
    chunks = open_repository(load_config(renv.config_path)).get_manifest(b["id"], "cache").stream("dump.rdb").chunks
    assert len(chunks) >= 4, len(chunks)
    target = renv.root / "bad-chunk"
    # The target's disk refuses the writes half way (a file size limit: EFBIG, as a full disk's ENOSPC).
    proc = renv.drkit("restore", "cache", "--backup", b["id"], "--target-dir", str(target), check=False,
                      max_file_size=4 << 20)
    assert proc.returncode == 1 and "File too large" in proc.stderr and "emptied again" in proc.stderr, proc.stderr
    assert "free space" in proc.stderr and "unexpected" not in proc.stderr and "Traceback" not in proc.stderr
    assert target.exists() and not any(target.iterdir())
    _blob, pack, offset, length, _raw = chunks[len(chunks) // 2]
    path = renv.root / "repo" / pack_key(pack)
    good = path.read_bytes()
    bad = bytearray(good)
    bad[int(offset) + int(length) // 2] ^= 0x01
    path.write_bytes(bytes(bad))
    proc = renv.drkit("restore", "cache", "--backup", b["id"], "--target-dir", str(target), check=False)
    assert proc.returncode == 5 and pack in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert target.exists() and not any(target.iterdir())
    path.unlink()
    proc = renv.drkit("restore", "cache", "--backup", b["id"], "--target-dir", str(target), check=False)
    assert proc.returncode == 5 and pack in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any(target.iterdir())
    path.write_bytes(good)  # the same object back: the restore works again, every key served
    res = json.loads(renv.drkit("restore", "cache", "--backup", b["id"], "--target-dir", str(target), "--start",
                                "--json").stdout)
    renv.started_pids.append(res["pid"])
    assert res["keys_served"] == 800
    with redis.Redis(host="127.0.0.1", port=res["port"]) as r:
        assert {k: r.get(k) for k in written} == written
        assert {k for k in written if r.pttl(k) > 0} == {k for i, k in enumerate(written) if i % 7 == 0}
