"""Throw-away Apache Cassandra 5.0 clusters on loopback: one node, or a ring on 127.0.0.1–127.0.0.N.

Each node is a ``CassandraDaemon`` JVM started from local jars (see
:mod:`drkit.sandbox.cassandra_config`: the Maven cache or an operator's install directory), with
a generated ``cassandra.yaml`` and logback configuration.  Node *i* (0-based) listens on
127.0.0.(i+1) — Linux routes all of 127.0.0.0/8 to ``lo`` without setup — on the same native
and storage ports as the others, and has its own JMX port on 127.0.0.1 (local JMX, no auth).
Nodes start one after another; each is ready when its native protocol answers a CQL query and,
in a ring, ``nodetool status`` on every running node shows all of them ``UN`` (polled, never a
fixed sleep).  A node that fails to start raises :class:`SandboxError` with its log tail, and
whatever was started is killed.

Layout of a work directory (node *N* = 1, 2, ...)::

    workdir/nodetool                  nodetool against node1 (a shell script)
    workdir/nodeN/conf/               cassandra.yaml, logback.xml, commitlog_archiving.properties
    workdir/nodeN/data/               data_file_directories (data1, data2, ... when several)
    workdir/nodeN/commitlog/  saved_caches/  hints/  cdc_raw/
    workdir/nodeN/logs/system.log     the node's log (logback and the JVM's own output)
    workdir/nodeN/nodetool            nodetool against this node
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.sandbox import SandboxError
from drkit.sandbox.cassandra_config import (
    LOGBACK_TOOLS_XML,
    LOGBACK_XML,
    CassandraNode,
    cassandra_version,
    check_loopback,
    common_port,
    ensure_cassandra,
    find_java,
    find_nodetool_script,
    log_tail,
    nodetool_argv,
    parse_status,
    render_properties,
    render_yaml,
    ring_token,
    server_argv,
    tool_env,
    write_script,
)
from drkit.sandbox.ports import free_port

START_TIMEOUT = 300.0  # per node; a JVM start takes ~20 s on an idle 2-core machine
STOP_TIMEOUT = 60.0
HEAP_MB = 512
_POLL = 0.25
_BIND_ERRORS = ("Address already in use", "BindException", "Failed to bind port")


@dataclass
class CassandraCluster:
    """A running (or stopped) sandbox Cassandra cluster; ``nodes[i]`` is node i+1 on 127.0.0.(i+1)."""

    workdir: Path
    cluster_name: str
    nodes: list[CassandraNode]
    lib_dir: Path
    java: str
    argv_extra: list[str] = field(default_factory=list, repr=False)
    heap_mb: int = HEAP_MB
    nodetool_script: Path | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    version: str = ""

    @property
    def contact_points(self) -> list[str]:
        return [n.host for n in self.nodes]

    @property
    def native_port(self) -> int:
        return self.nodes[0].native_port

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid is not None and n.alive()]

    def driver_cluster(self, **kwargs: Any) -> Any:
        """An (unconnected) ``cassandra.cluster.Cluster`` for all nodes; call ``.shutdown()``.

        Token-aware routing in ``datacenter1`` unless ``execution_profiles`` are given; native
        protocol v5 unless ``protocol_version`` is.
        """
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

        if "execution_profiles" not in kwargs:
            policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc="datacenter1"))
            kwargs["execution_profiles"] = {EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy)}
        kwargs.setdefault("protocol_version", 5)
        return Cluster(self.contact_points, port=self.native_port, **kwargs)

    # -- nodetool --------------------------------------------------------------------------------

    def nodetool_argv(self, i: int) -> list[str]:
        node = self.nodes[i]
        return nodetool_argv(self.java, self.lib_dir, jmx_port=node.jmx_port, storage_dir=node.node_dir,
                             nodetool_script=self.nodetool_script)

    def nodetool(self, i: int, *args: str, timeout: float = 300.0, check: bool = False
                 ) -> subprocess.CompletedProcess[str]:
        """Run ``nodetool ARGS`` against node ``i``; ``check`` raises SandboxError on failure."""
        try:
            res = subprocess.run([*self.nodetool_argv(i), *args], capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL, env=tool_env(self.java))
        except subprocess.TimeoutExpired:
            raise SandboxError(f"nodetool {' '.join(args)} on {self.nodes[i].name} took over {timeout:.0f} s") from None
        if check and res.returncode != 0:
            raise SandboxError(f"nodetool {' '.join(args)} on {self.nodes[i].name} exited {res.returncode}: "
                               f"{(res.stderr or res.stdout).strip()[-2000:]}")
        return res

    def status(self, i: int = 0) -> dict[str, str]:
        """``nodetool status`` of node ``i`` as {address: 'UN'|'DN'|...} ({} when it fails)."""
        res = self.nodetool(i, "status", timeout=120)
        return parse_status(res.stdout) if res.returncode == 0 else {}

    def log_tail(self, i: int, lines: int = 40) -> str:
        return self.nodes[i].log_tail(lines)

    # -- processes -------------------------------------------------------------------------------

    def start_node(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Start node ``i`` again (after kill_node/stop_node); wait until it serves and the ring is UN."""
        node = self.nodes[i]
        if node.alive():
            raise SandboxError(f"{node.name} is already running (pid {node.pid})")
        self._launch(node)
        try:
            _start_wait(self, node, timeout, [n for n in self.nodes if n.alive() or n is node])
        except SandboxError:
            _terminate([node], 10.0)
            raise

    def kill_node(self, i: int, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL node ``i`` (a crash: no flush, commit log left to replay); wait until it is gone."""
        node = self.nodes[i]
        if node.alive():
            _signal(node, signal.SIGKILL)
        _wait_gone([node], timeout)
        _reap(node)

    def stop_node(self, i: int, drain: bool = False, timeout: float = STOP_TIMEOUT) -> None:
        """Stop node ``i`` cleanly: optional ``nodetool drain``, SIGTERM, SIGKILL after ``timeout``."""
        if drain and self.nodes[i].alive():
            self._drain([self.nodes[i]], timeout)
        _terminate([self.nodes[i]], timeout)

    def stop(self, drain: bool = False, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every node (SIGTERM together, SIGKILL after ``timeout``); return once none is left."""
        running = [n for n in self.nodes if n.alive()]
        if drain:
            self._drain(running, timeout)
        _terminate(running, timeout)

    def _drain(self, nodes: Sequence[CassandraNode], timeout: float) -> None:
        """``nodetool drain`` (flush memtables, stop accepting writes) on ``nodes``; best effort."""
        try:
            _parallel([lambda n=n: self.nodetool(n.index, "drain", timeout=timeout) for n in nodes])
        except SandboxError:
            pass  # a drain that hangs does not keep the node from being stopped

    def _launch(self, node: CassandraNode) -> None:
        argv = server_argv(self.java, self.lib_dir, node_dir=node.node_dir, conf_dir=node.conf_dir,
                           log_dir=node.log_path.parent, jmx_port=node.jmx_port, heap_mb=self.heap_mb,
                           extra_jvm=self.argv_extra)
        if os.geteuid() == 0 and shutil.which("setpriv"):
            # Cassandra mlockall()s its memory when it may; as root it may, and the whole heap
            # would stay resident.  Without CAP_IPC_LOCK it logs a warning and goes on.
            argv = [str(shutil.which("setpriv")), "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--", *argv]
        node.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(node.log_path, "ab") as log:
            log.write(f"==== drkit: starting {node.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ====\n".encode())
            log.flush()
            node.proc = subprocess.Popen(argv, cwd=node.node_dir, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node.pid = node.proc.pid

    def _wait_ready(self, node: CassandraNode, ring: list[CassandraNode], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        _wait_cql(node, deadline)
        if len(ring) > 1:
            self._wait_ring(ring, deadline)

    def _wait_ring(self, ring: list[CassandraNode], deadline: float) -> None:
        """Poll ``nodetool status`` on every node of ``ring`` until each shows all of them UN."""
        want = {n.host for n in ring}
        while True:
            views = _parallel([lambda n=n: self.status(n.index) for n in ring])
            if all(want <= {h for h, s in v.items() if s == "UN"} for v in views):
                return
            for n in ring:
                if not n.alive():
                    raise SandboxError(f"{n.name} exited while the ring formed")
            if time.monotonic() > deadline:
                raise SandboxError(f"nodes not all UN in time; views: {views}")
            time.sleep(_POLL)


# --------------------------------------------------------------------------------------------
# Helpers


def _signal(node: CassandraNode, sig: signal.Signals) -> None:
    if node.proc is not None:  # ours: Popen knows whether the pid is still this process
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
        return
    if node.pid is not None and node.alive():
        try:
            os.kill(node.pid, sig)
        except ProcessLookupError:
            pass


def _reap(node: CassandraNode) -> None:
    if node.proc is not None:
        try:
            node.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    node.proc = None
    node.pid = None


def _wait_gone(nodes: Sequence[CassandraNode], timeout: float) -> list[CassandraNode]:
    deadline = time.monotonic() + timeout
    left = [n for n in nodes if n.alive()]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [n for n in left if n.alive()]
    return left


def _terminate(nodes: Sequence[CassandraNode], timeout: float) -> None:
    """SIGTERM ``nodes`` together, SIGKILL what is left after ``timeout``; wait until all are gone."""
    for n in nodes:
        _signal(n, signal.SIGTERM)
    left = _wait_gone(nodes, timeout)
    for n in left:
        _signal(n, signal.SIGKILL)
    left = _wait_gone(left, 30.0)
    if left:
        raise SandboxError(f"Cassandra pids {[n.pid for n in left]} survived SIGKILL")
    for n in nodes:
        _reap(n)


def _parallel(calls: Sequence[Any]) -> list[Any]:
    """Run the callables in threads; their results in order (an exception is re-raised)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = calls[k]()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _cql_answers(host: str, port: int) -> bool:
    """True when a CQL query on host:port succeeds (cassandra-driver, this node only)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=10)
    cluster = Cluster([host], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                      connect_timeout=10, control_connection_timeout=10, protocol_version=5,
                      schema_metadata_enabled=False,
                      token_metadata_enabled=False)
    try:
        session = cluster.connect()
        return session.execute("SELECT release_version FROM system.local").one() is not None
    except Exception:  # noqa: BLE001 - any driver error means "not yet"
        return False
    finally:
        cluster.shutdown()


def _wait_cql(node: CassandraNode, deadline: float) -> None:
    while not _cql_answers(node.host, node.native_port):
        if not node.alive():
            rc = node.proc.poll() if node.proc else None
            raise SandboxError(f"{node.name} exited (code {rc}) before serving CQL")
        if time.monotonic() > deadline:
            raise SandboxError(f"{node.name} did not answer CQL on {node.host}:{node.native_port} in time")
        time.sleep(_POLL)


# --------------------------------------------------------------------------------------------
# Starting clusters


def _layout(cluster: CassandraCluster, nodes: int, data_dirs: int, ports: tuple[int, int, list[int]],
            overrides: Mapping[str, Any] | None, archiving: Mapping[str, str] | None) -> None:
    """Create each node's directories, configuration and nodetool scripts."""
    native, storage, jmx = ports
    hosts = [f"127.0.0.{i + 1}" for i in range(nodes)]
    cluster.nodes = []
    for i, host in enumerate(hosts):
        d = cluster.workdir / f"node{i + 1}"
        data = [d / "data"] if data_dirs == 1 else [d / f"data{k + 1}" for k in range(data_dirs)]
        node = CassandraNode(
            index=i, name=f"node{i + 1}", host=host, native_port=native, storage_port=storage, jmx_port=jmx[i],
            initial_token=ring_token(i, nodes), node_dir=d, config_path=d / "conf" / "cassandra.yaml",
            data_file_directories=data, commitlog_directory=d / "commitlog", saved_caches_directory=d / "saved_caches",
            hints_directory=d / "hints", cdc_raw_directory=d / "cdc_raw", log_path=d / "logs" / "system.log",
            nodetool_path=d / "nodetool")
        for sub in (node.conf_dir, *data, node.commitlog_directory, node.saved_caches_directory,
                    node.hints_directory, node.cdc_raw_directory, node.log_path.parent):
            sub.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(render_yaml(
            cluster_name=cluster.cluster_name, host=host, seeds=hosts[:1], storage_port=storage,
            native_port=native, initial_token=node.initial_token, data_dirs=data,
            commitlog_dir=node.commitlog_directory, saved_caches_dir=node.saved_caches_directory,
            hints_dir=node.hints_directory, cdc_raw_dir=node.cdc_raw_directory, overrides=overrides))
        (node.conf_dir / "logback.xml").write_text(LOGBACK_XML)
        (node.conf_dir / "logback-tools.xml").write_text(LOGBACK_TOOLS_XML)
        if archiving:
            (node.conf_dir / "commitlog_archiving.properties").write_text(render_properties(archiving))
        cluster.nodes.append(node)
        write_script(node.nodetool_path, cluster.nodetool_argv(i),
                      f"nodetool for drkit's Cassandra sandbox {node.name} ({host}, JMX 127.0.0.1:{node.jmx_port})")
    write_script(cluster.workdir / "nodetool", cluster.nodetool_argv(0),
                  "nodetool for node1 of drkit's Cassandra sandbox (nodeN/nodetool for the others)")


def start_cassandra(
    workdir: Path,
    nodes: int = 1,
    *,
    cassandra_home: str | os.PathLike[str] | None = None,
    heap_mb: int = HEAP_MB,
    native_port: int | None = None,
    storage_port: int | None = None,
    jmx_ports: Sequence[int] | None = None,
    data_dirs: int = 1,
    config_overrides: Mapping[str, Any] | None = None,
    commitlog_archiving: Mapping[str, str] | None = None,
    jvm_opts: Sequence[str] = (),
    quick_jit: bool = True,
    env: Mapping[str, str] | None = None,
    cluster_name: str | None = None,
    timeout: float = START_TIMEOUT,
) -> CassandraCluster:
    """Lay out ``nodes`` new nodes in ``workdir`` and start them one after another; wait until ready.

    - jars from ``cassandra_home`` / ``$DRKIT_CASSANDRA_HOME`` (``lib/*.jar``, ``bin/nodetool``),
      else from the Maven cache (:func:`ensure_cassandra`, fetched on first use);
    - node i on 127.0.0.(i+1), all on the same native and storage ports (free ones unless
      given), JMX on 127.0.0.1:``jmx_ports[i]``; one token each (``initial_token`` evenly
      spaced), node1 the seed, no bootstrap streaming (the ring is new and empty);
    - ``heap_mb`` MiB of heap per node, small memtables and caches, CDC off;
    - ``config_overrides`` are merged into every cassandra.yaml last (a None value removes a
      key); ``commitlog_archiving`` becomes conf/commitlog_archiving.properties (archive_command,
      restore_command, restore_directories, restore_point_in_time, precision);
    - ``quick_jit``: C1 only (``-XX:TieredStopAtLevel=1``), which starts a node ~30 % faster
      on 2 cores; pass False for benchmarks (full C2 JIT).  ``jvm_opts`` come last;
    - ``env`` is added to the nodes' small environment (archive commands inherit it);
    - ``timeout`` applies to each node's start.  Auto-picked ports that another process takes
      meanwhile are picked again (up to three tries).
    """
    if not 1 <= nodes <= 9:
        raise SandboxError("a Cassandra sandbox has 1 to 9 nodes")
    if data_dirs < 1:
        raise SandboxError("data_dirs must be at least 1")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for i in range(nodes):
        d = workdir / f"node{i + 1}"
        if d.exists() and any(d.iterdir()):
            raise SandboxError(f"{d} exists and is not empty; use a new work directory")
    java = find_java()
    lib = ensure_cassandra(cassandra_home)
    hosts = [f"127.0.0.{i + 1}" for i in range(nodes)]
    check_loopback(hosts)
    if jmx_ports is not None and len(jmx_ports) != nodes:
        raise SandboxError(f"jmx_ports needs {nodes} ports, one per node")
    node_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "HOME": os.environ.get("HOME", "/root"), "MALLOC_ARENA_MAX": "4",
                "JAVA_HOME": str(Path(java).resolve().parent.parent), **(env or {})}
    if "TZ" in os.environ:
        node_env.setdefault("TZ", os.environ["TZ"])
    cluster = CassandraCluster(workdir=workdir, cluster_name=cluster_name or f"drkit-{uuid.uuid4().hex[:8]}",
                               nodes=[], lib_dir=lib, java=java, heap_mb=heap_mb,
                               argv_extra=(["-XX:TieredStopAtLevel=1"] if quick_jit else []) + list(jvm_opts),
                               nodetool_script=find_nodetool_script(cassandra_home), env=node_env,
                               version=_lib_version(lib))
    auto = native_port is None and storage_port is None and jmx_ports is None
    for attempt in range(3 if auto else 1):
        native = native_port or common_port(hosts, set())
        storage = storage_port or common_port(hosts, {native})
        jmx = list(jmx_ports) if jmx_ports else []
        while len(jmx) < nodes:
            p = free_port()
            if p not in (native, storage, *jmx):
                jmx.append(p)
        _layout(cluster, nodes, data_dirs, (native, storage, jmx), config_overrides, commitlog_archiving)
        try:
            for node in cluster.nodes:
                cluster._launch(node)
                _start_wait(cluster, node, timeout, cluster.nodes[: node.index + 1])
            return cluster
        except BaseException as exc:
            _abandon(cluster)
            bind = isinstance(exc, SandboxError) and any(e in str(exc) for e in _BIND_ERRORS)
            if not (auto and bind and attempt < 2):
                raise
            for node in cluster.nodes:
                shutil.rmtree(node.node_dir, ignore_errors=True)
    raise SandboxError("unreachable")  # pragma: no cover


def _lib_version(lib: Path) -> str:
    """The Cassandra version of a jar directory (from the server jar's name)."""
    for jar in sorted(lib.glob("*.jar")):
        match = re.fullmatch(r"(?:apache-cassandra|cassandra-all)-(\d[\w.\-]*)\.jar", jar.name)
        if match:
            return match.group(1)
    return cassandra_version()


def _start_wait(cluster: CassandraCluster, node: CassandraNode, timeout: float,
                ring: list[CassandraNode]) -> None:
    try:
        cluster._wait_ready(node, ring, timeout)
    except SandboxError as exc:
        raise SandboxError(f"Cassandra {node.name} ({node.host}) failed to start: {exc}\n"
                           f"--- tail of {node.log_path} ---\n{node.log_tail()}") from None


def _abandon(cluster: CassandraCluster) -> None:
    """After a failed start: kill every node of it that runs (nothing is kept anyway)."""
    running = [n for n in cluster.nodes if n.pid is not None]
    for n in running:
        _signal(n, signal.SIGKILL)
    _wait_gone(running, 30.0)
    for n in running:
        _reap(n)


# --------------------------------------------------------------------------------------------
# ``drkit sandbox`` contract (see drkit.sandbox.kinds)


def cluster_state(cluster: CassandraCluster) -> dict[str, Any]:
    """JSON-able description of a cluster (what ``drkit sandbox up cassandra`` prints)."""
    nodes = [{
        "name": n.name, "host": n.host, "native_port": n.native_port, "storage_port": n.storage_port,
        "jmx_port": n.jmx_port, "pid": n.pid, "initial_token": str(n.initial_token), "dir": str(n.node_dir),
        "config": str(n.config_path), "log": str(n.log_path), "nodetool": str(n.nodetool_path),
        "data_file_directories": [str(d) for d in n.data_file_directories],
        "commitlog_directory": str(n.commitlog_directory), "saved_caches_directory": str(n.saved_caches_directory),
        "hints_directory": str(n.hints_directory), "cdc_raw_directory": str(n.cdc_raw_directory),
    } for n in cluster.nodes]
    return {
        "version": cluster.version, "cluster_name": cluster.cluster_name, "hosts": cluster.contact_points,
        "native_port": cluster.native_port, "nodetool": str(cluster.workdir / "nodetool"),
        "workdir": str(cluster.workdir), "lib_dir": str(cluster.lib_dir), "log": nodes[0]["log"],
        "pid": nodes[0]["pid"], "pids": [n["pid"] for n in nodes], "nodes": nodes,
    }


def sandbox_up(workdir: Path, nodes: int = 1) -> dict[str, Any]:
    """Start 1 node or a ring of ``nodes`` (3 for RF 3) in ``workdir``; leave them running."""
    if not 1 <= nodes <= 3:
        raise SandboxError("cassandra: --nodes is 1 (one node) or 3 (a ring; 2 works too)")
    cluster = start_cassandra(workdir, nodes)
    for node in cluster.nodes:
        node.proc = None  # leave it running
    return cluster_state(cluster)


def sandbox_down(state: dict[str, Any]) -> None:
    """SIGTERM every node of ``state`` together, SIGKILL after 60 s; return once all are gone."""
    nodes = []
    for i, n in enumerate(state.get("nodes") or []):
        d = Path(n["dir"])
        nodes.append(CassandraNode(
            index=i, name=n["name"], host=n["host"], native_port=n["native_port"], storage_port=n["storage_port"],
            jmx_port=n["jmx_port"], initial_token=int(n["initial_token"]), node_dir=d,
            config_path=Path(n["config"]), data_file_directories=[Path(p) for p in n["data_file_directories"]],
            commitlog_directory=d / "commitlog", saved_caches_directory=d / "saved_caches",
            hints_directory=d / "hints", cdc_raw_directory=d / "cdc_raw", log_path=Path(n["log"]),
            nodetool_path=Path(n["nodetool"]), pid=n.get("pid")))
    _terminate(nodes, STOP_TIMEOUT)


def ensure() -> str:
    """Fetch Cassandra's jars into the cache (or check ``$DRKIT_CASSANDRA_HOME``); say where."""
    find_java()
    return f"Cassandra jars in {ensure_cassandra()}"


__all__ = [
    "CassandraCluster",
    "CassandraNode",
    "cluster_state",
    "ensure_cassandra",
    "log_tail",
    "parse_status",
    "start_cassandra",
]
