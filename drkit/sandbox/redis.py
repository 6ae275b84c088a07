"""Throw-away Redis servers: a primary and an optional replica, with the persistence a caller asks.

``start_redis(workdir)`` writes ``workdir/redis.conf`` (mode 0600: it may hold ``requirepass``),
starts ``redis-server`` on 127.0.0.1 and a free port, and polls ``PING`` over the real protocol
until the server answers (never a fixed sleep).  ``replica=True`` starts a second server in
``workdir/replica`` with ``replicaof`` and waits until ``INFO replication`` says the link is up and
the initial sync is done.  A server that fails to start raises :class:`SandboxError` with its log
tail.  The password never appears on a command line or in the returned URL.

Layout::

    workdir/redis.conf   workdir/redis.log   workdir/data/   (dump.rdb, appendonlydir/)
    workdir/replica/...  the same for the replica

``settings`` are extra ``redis.conf`` directives, e.g. ``{"appendonly": "yes",
"aof-timestamp-enabled": "yes"}`` for point-in-time AOF, ``{"save": "60 1"}`` for RDB snapshots.
The binary is ``redis-server`` from PATH, ``$DRKIT_REDIS_SERVER``, or the ``binary`` argument, so an
operator's own build works the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.sandbox import SandboxError
from drkit.sandbox.ports import free_port
from drkit.sandbox.procs import log_tail
from drkit.sandbox.procs import pid_alive as _alive

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SYNC_TIMEOUT = 120.0
_POLL = 0.05


def find_redis_server(binary: str | os.PathLike[str] | None = None) -> Path:
    """``binary``, else ``$DRKIT_REDIS_SERVER``, else ``redis-server`` on PATH."""
    explicit = binary or os.environ.get("DRKIT_REDIS_SERVER")
    found = str(explicit) if explicit else shutil.which("redis-server")
    if not found or not os.access(found, os.X_OK):
        raise SandboxError(
            f"redis-server not found ({explicit or 'not on PATH'}); install the OS package "
            "(scripts/install.sh installs redis-server) or set DRKIT_REDIS_SERVER"
        )
    return Path(found)


def server_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


@dataclass
class RedisInstance:
    """A running (or stopped) sandbox redis-server."""

    host: str
    port: int
    pid: int
    workdir: Path
    data_dir: Path
    conf_path: Path
    log_path: Path
    binary: Path
    password: str | None = field(default=None, repr=False)
    replica: RedisInstance | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` -- without the password (give it separately)."""
        return f"redis://{self.host}:{self.port}"

    def client(self, db: int = 0, **kw: Any) -> Any:
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db, password=self.password,
                           socket_timeout=kw.pop("socket_timeout", 30), **kw)

    def alive(self) -> bool:
        return _alive(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines) or f"(no log at {self.log_path})"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the replica (if any), then this server: SIGTERM, wait, SIGKILL; no process is left."""
        if self.replica is not None:
            self.replica.stop(timeout)
        _terminate(self.pid, self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL this server only (a lost primary; a replica stays up)."""
        if _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        _wait_gone(self.pid, self.proc, STOP_TIMEOUT)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start this stopped/killed server again from its config (same port and data)."""
        if self.alive():
            return
        self.proc = _spawn(self.binary, self.conf_path, self.log_path)
        self.pid = self.proc.pid
        _wait_ready(self, timeout, "restart")


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not _alive(pid):
            return True
        time.sleep(_POLL)
    return False


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is not None and proc.poll() is not None:
        return
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, proc, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, proc, 10)


def _conf_value(value: object) -> str:
    text = str(value)
    if any(c in text for c in "\n\r"):
        raise SandboxError(f"redis.conf value must be one line: {text!r}")
    return text


def _write_conf(path: Path, port: int, data_dir: Path, log_path: Path, password: str | None,
                settings: Mapping[str, object]) -> None:
    lines = [
        f"bind {HOST}", f"port {port}", "daemonize no", f"dir {data_dir}", f"logfile {log_path}",
        "save ''", "appendonly no", "protected-mode yes", "loglevel notice",
        "repl-diskless-sync-delay 0",  # the default waits 5 s for more replicas before every sync
    ]
    if password:
        lines += [f'requirepass "{password}"', f'masterauth "{password}"']
    lines += [f"{k} {_conf_value(v)}" for k, v in settings.items()]  # later lines win
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def _spawn(binary: Path, conf: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:  # early failures (bad config) go to stdout/stderr
        return subprocess.Popen([str(binary), str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(inst: RedisInstance, timeout: float, what: str) -> None:
    import redis

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if inst.proc is not None and inst.proc.poll() is not None:
            raise SandboxError(f"redis-server ({what}) exited with {inst.proc.returncode} at start; "
                               f"log tail ({inst.log_path}):\n{inst.log_tail()}")
        try:
            with inst.client(socket_timeout=1, socket_connect_timeout=1) as c:
                if c.ping():
                    info = c.info("persistence")
                    if not info.get("loading"):
                        return
                    last = "loading"
        except redis.RedisError as exc:
            last = type(exc).__name__
        time.sleep(_POLL)
    _terminate(inst.pid, inst.proc, 5)
    raise SandboxError(f"redis-server ({what}) did not answer PING within {timeout:.0f} s ({last}); "
                       f"log tail ({inst.log_path}):\n{inst.log_tail()}")


def _start_one(workdir: Path, binary: Path, password: str | None, settings: Mapping[str, object],
               port: int | None, timeout: float, what: str) -> RedisInstance:
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    conf, log_path = workdir / "redis.conf", workdir / "redis.log"
    for attempt in range(3):
        chosen = port or free_port()
        _write_conf(conf, chosen, data_dir, log_path, password, settings)
        proc = _spawn(binary, conf, log_path)
        inst = RedisInstance(HOST, chosen, proc.pid, workdir, data_dir, conf, log_path, binary, password,
                             proc=proc)
        try:
            _wait_ready(inst, timeout, what)
            return inst
        except SandboxError as exc:
            if port is None and attempt < 2 and "Address already in use" in str(exc):
                continue  # lost the race for the free port: pick another
            raise
    raise AssertionError("unreachable")


def wait_replica_synced(primary: RedisInstance, replica: RedisInstance, timeout: float = SYNC_TIMEOUT) -> None:
    """Wait until ``replica``'s link is up, its initial sync done and its offset caught up."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with replica.client(socket_timeout=5) as rc, primary.client(socket_timeout=5) as pc:
            state = rc.info("replication")
            target = pc.info("replication").get("master_repl_offset", 0)
        if (state.get("master_link_status") == "up" and not state.get("master_sync_in_progress")
                and state.get("slave_repl_offset", -1) >= target):
            return
        time.sleep(_POLL)
    raise SandboxError(f"replica on port {replica.port} not in sync after {timeout:.0f} s "
                       f"(link {state.get('master_link_status')}); log tail:\n{replica.log_tail()}")


def start_redis(
    workdir: Path,
    *,
    replica: bool = False,
    password: str | None = None,
    settings: Mapping[str, object] | None = None,
    replica_settings: Mapping[str, object] | None = None,
    port: int | None = None,
    binary: str | os.PathLike[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> RedisInstance:
    """Start a redis-server in ``workdir`` (and a replica in ``workdir/replica``); wait until ready."""
    exe = find_redis_server(binary)
    workdir = Path(workdir).absolute()
    primary = _start_one(workdir, exe, password, settings or {}, port, timeout, "primary")
    if replica:
        try:
            rs = {"replicaof": f"{HOST} {primary.port}", **(replica_settings or {})}
            primary.replica = _start_one(workdir / "replica", exe, password, rs, None, timeout, "replica")
            wait_replica_synced(primary, primary.replica)
        except BaseException:
            primary.stop()
            raise
    return primary


# --------------------------------------------------------------------------------------------
# ``drkit sandbox`` contract (see drkit.sandbox.kinds)


def sandbox_up(workdir: Path, nodes: int = 1) -> dict[str, Any]:
    """A primary (``nodes`` 2: plus a replica in sync), no password, left running."""
    if nodes not in (1, 2):
        raise SandboxError("redis: --nodes is 1 (primary) or 2 (primary + replica)")
    inst = start_redis(workdir, replica=nodes > 1)
    procs = [inst] + ([inst.replica] if inst.replica else [])
    for p in procs:
        p.proc = None  # leave them running
    return {
        "url": inst.url, "port": inst.port, "pid": inst.pid, "data_dir": str(inst.data_dir),
        "conf": str(inst.conf_path), "log": str(inst.log_path), "binary": str(inst.binary),
        "replica": ({"url": inst.replica.url, "port": inst.replica.port, "pid": inst.replica.pid,
                     "data_dir": str(inst.replica.data_dir)} if inst.replica else None),
        "pids": [p.pid for p in procs],
    }


def sandbox_down(state: dict[str, Any]) -> None:
    """Nothing beyond the CLI's sweep: redis-server stops on SIGTERM (replica first)."""
    if state.get("replica"):
        _terminate(int(state["replica"]["pid"]), None, STOP_TIMEOUT)


def ensure() -> str:
    exe = find_redis_server()
    return f"{exe} (v{server_version(exe)})"
