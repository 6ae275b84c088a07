"""The Cassandra sandbox against real nodes: a 3-node ring at QUORUM, one node from an install
directory, start failures with the log tail, ``drkit sandbox up|status|down cassandra``.

Nothing here skips: a node that cannot start fails the test (CI treats skips as failures).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement
from cassandra_fixtures import fixture_cassandra_cluster, leftover_processes, ports_left
from pgenv import DRKIT, workdir

from drkit.sandbox import SandboxError, port_is_free
from drkit.sandbox.cassandra import CassandraCluster, ensure_cassandra, parse_status, start_cassandra
from drkit.sandbox.cassandra_config import nodetool_argv, pid_alive

# The ring is shared by every module once conftest.py imports the fixture; until it does, this
# module provides it (defining it here as well would start a second ring).
if not any(getattr(m, "fixture_cassandra_cluster", None) is fixture_cassandra_cluster
           for name, m in list(sys.modules.items()) if name not in (__name__, "cassandra_fixtures")):
    cassandra_cluster = fixture_cassandra_cluster

QUORUM = ConsistencyLevel.QUORUM


def _install_dir(root: Path) -> tuple[Path, Path]:
    """A Cassandra "install directory": lib/ of jars (links to the cache) and a bin/nodetool that
    leaves a mark; returns (home, mark)."""
    home, cache = root / "apache-cassandra", ensure_cassandra()
    (home / "lib").mkdir(parents=True)
    (home / "bin").mkdir()
    for jar in cache.glob("*.jar"):
        (home / "lib" / jar.name).symlink_to(jar)
    mark = root / "nodetool-used"
    java_cmd = nodetool_argv("java", home / "lib", jmx_port=0, storage_dir=root)[:-4]  # less -h/-p
    (root / "conf").mkdir()
    (root / "conf" / "logback-tools.xml").write_text("<configuration/>")
    script = home / "bin" / "nodetool"
    script.write_text(f"#!/bin/sh\ntouch {mark}\nexec {shlex.join(java_cmd)} \"$@\"\n")
    script.chmod(0o755)
    return home, mark


def test_single_node_from_install_dir_restart_and_stop(tmp_path: Path) -> None:
    home, mark = _install_dir(tmp_path)
    archive = tmp_path / "commitlog-archive"
    archive.mkdir()
    c = start_cassandra(tmp_path / "wd", 1, cassandra_home=home, config_overrides={"commitlog_segment_size": "1MiB"},
                        commitlog_archiving={"archive_command": f"/bin/cp %path {archive}/%name"})
    try:
        assert c.lib_dir == home / "lib" and c.contact_points == ["127.0.0.1"]
        assert c.status(0) == {"127.0.0.1": "UN"} and mark.exists()  # through home/bin/nodetool
        driver = c.driver_cluster()
        try:
            s = driver.connect()
            s.execute("CREATE KEYSPACE one WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
            s.execute("CREATE TABLE one.t (k int PRIMARY KEY, v text)")
            s.execute("INSERT INTO one.t (k, v) VALUES (1, 'kept')")
            ins = s.prepare("INSERT INTO one.t (k, v) VALUES (?, ?)")
            for k in range(2, 1500):  # ~1.5 MiB: the 1 MiB commit log segment fills and rolls
                s.execute(ins, (k, "x" * 1000))
        finally:
            driver.shutdown()
        first_pid = c.nodes[0].pid
        c.stop_node(0, drain=True)  # clean: drain, SIGTERM
        assert c.nodes[0].pid is None and not os.path.exists(f"/proc/{first_pid}")
        assert "DRAINED" in c.log_tail(0, 400)
        assert list(archive.glob("CommitLog-*.log"))  # archive_command ran (conf/ is on the classpath)
        c.start_node(0)
        driver = c.driver_cluster()
        try:
            assert driver.connect().execute("SELECT v FROM one.t WHERE k = 1").one().v == "kept"
        finally:
            driver.shutdown()
    finally:
        c.stop()
    assert leftover_processes(c.workdir) == []
    assert ports_left(c) == []


def test_start_failure_shows_log_tail_and_leaves_nothing(tmp_path: Path) -> None:
    # a cassandra.yaml Cassandra refuses
    with pytest.raises(SandboxError) as bad:
        start_cassandra(tmp_path / "bad-yaml", 1, config_overrides={"no_such_setting": 1})
    msg = str(bad.value)
    assert "tail of" in msg and "Please remove properties [no_such_setting]" in msg
    assert leftover_processes(tmp_path / "bad-yaml") == []
    # a port another process holds (given explicitly, so not picked again)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SandboxError) as taken:
            start_cassandra(tmp_path / "taken", 1, jmx_ports=[port])
    msg = str(taken.value)
    assert "tail of" in msg and "Address already in use" in msg and str(port) in msg
    assert leftover_processes(tmp_path / "taken") == []


def test_missing_maven_or_bad_install_dir_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor java on PATH
    with pytest.raises(SandboxError, match=r"install Maven \(apt-get install maven\)"):
        ensure_cassandra()
    monkeypatch.setenv("DRKIT_CASSANDRA_HOME", str(tmp_path))
    with pytest.raises(SandboxError, match="not a Cassandra install directory"):
        ensure_cassandra()


def _drkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DRKIT, "sandbox", *args], capture_output=True, text=True, timeout=600)


def test_cli_up_status_down() -> None:
    d = workdir("sbx-cassandra")
    up = _drkit("up", "cassandra", "--nodes", "1", "--dir", str(d), "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        assert state["kind"] == "cassandra" and state["hosts"] == ["127.0.0.1"] and len(state["pids"]) == 1
        node = state["nodes"][0]
        assert Path(node["data_file_directories"][0]).is_dir() and Path(node["commitlog_directory"]).is_dir()
        tool = subprocess.run([state["nodetool"], "status"], capture_output=True, text=True, timeout=120)
        assert tool.returncode == 0, tool.stderr
        assert parse_status(tool.stdout) == {"127.0.0.1": "UN"}
        from cassandra.cluster import Cluster

        driver = Cluster(state["hosts"], port=state["native_port"])
        try:
            assert driver.connect().execute("SELECT release_version FROM system.local").one()[0].startswith("5.0")
        finally:
            driver.shutdown()
        assert _drkit("status", str(d)).returncode == 0
    finally:
        down = _drkit("down", str(d))
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in state["pids"])  # gone (or a zombie init has yet to reap)
    assert leftover_processes(d) == []
    for port, host in ((node["native_port"], "127.0.0.1"), (node["storage_port"], "127.0.0.1"),
                       (node["jmx_port"], "127.0.0.1")):
        deadline = time.monotonic() + 10
        while not port_is_free(port, host) and time.monotonic() < deadline:
            time.sleep(0.2)
        holders = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
        assert port_is_free(port, host), [ln for ln in holders.splitlines() if f":{port} " in ln]
    assert _drkit("status", str(d)).returncode != 0


# -- the shared 3-node ring: last, so that no other node runs beside it in this module ----------


def _wait_status(cluster: CassandraCluster, viewer: int, host: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (seen := cluster.status(viewer).get(host)) != state:
        assert time.monotonic() < deadline, f"{host} is {seen} on node{viewer + 1}, not {state}"
        time.sleep(0.5)


def test_ring_all_up_and_quorum(cassandra_cluster: CassandraCluster) -> None:
    c = cassandra_cluster
    assert c.contact_points == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert len({(n.native_port, n.storage_port) for n in c.nodes}) == 1  # same ports, own address
    assert len({n.jmx_port for n in c.nodes}) == 3
    # the nodetool script of node2 (what the CLI state names), and nodetool() on node3
    script = subprocess.run([str(c.nodes[1].nodetool_path), "status"], capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr
    for out in (script.stdout, c.nodetool(2, "status", check=True).stdout):
        assert parse_status(out) == {h: "UN" for h in c.contact_points}
    for n in c.nodes:
        assert n.config_path.is_file() and n.log_path.is_file()
        assert all(d.is_dir() for d in (*n.data_file_directories, n.commitlog_directory, n.hints_directory,
                                         n.saved_caches_directory, n.cdc_raw_directory))

    driver = c.driver_cluster()
    try:
        s = driver.connect()
        s.execute("CREATE KEYSPACE ring_q WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}")
        s.execute("CREATE TABLE ring_q.kv (k int PRIMARY KEY, v text)")
        ins = SimpleStatement("INSERT INTO ring_q.kv (k, v) VALUES (%s, %s)", consistency_level=QUORUM)
        for k in range(20):
            s.execute(ins, (k, f"v{k}"))
        sel = SimpleStatement("SELECT k, v FROM ring_q.kv WHERE k = %s", consistency_level=QUORUM)
        assert [tuple(s.execute(sel, (k,)).one()) for k in range(20)] == [(k, f"v{k}") for k in range(20)]
        tokens = {str(s.execute("SELECT tokens FROM system.local").one().tokens) for _ in range(6)}
        assert tokens  # answered; each node owns one token
        assert {n.initial_token for n in c.nodes} == {-(2**63), -(2**63) + 2**64 // 3, -(2**63) + 2 * (2**64 // 3)}
    finally:
        driver.shutdown()


def test_ring_node_killed_and_started_again(cassandra_cluster: CassandraCluster) -> None:
    c = cassandra_cluster
    driver = c.driver_cluster()
    try:
        s = driver.connect()
        s.execute("CREATE KEYSPACE IF NOT EXISTS ring_k WITH replication = "
                  "{'class': 'SimpleStrategy', 'replication_factor': 3}")
        s.execute("CREATE TABLE IF NOT EXISTS ring_k.kv (k int PRIMARY KEY, v int)")
        ins = SimpleStatement("INSERT INTO ring_k.kv (k, v) VALUES (%s, %s)", consistency_level=QUORUM)
        pid = c.nodes[2].pid
        c.kill_node(2)
        try:
            assert c.nodes[2].pid is None and not os.path.exists(f"/proc/{pid}")
            _wait_status(c, 0, "127.0.0.3", "DN")
            for k in range(10):  # QUORUM = 2 of 3 replicas: still writable
                s.execute(ins, (k, k * k))
        finally:
            c.start_node(2)
        assert c.status(2) == {h: "UN" for h in c.contact_points}
        sel = SimpleStatement("SELECT v FROM ring_k.kv WHERE k = %s", consistency_level=QUORUM)
        assert [s.execute(sel, (k,)).one().v for k in range(10)] == [k * k for k in range(10)]
    finally:
        driver.shutdown()
