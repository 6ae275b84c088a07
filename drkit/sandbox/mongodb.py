"""Throw-away MongoDB-wire servers with an oplog: FerretDB (SQLite backend) or a real ``mongod``.

FerretDB v1.24 is embedded, as an ordinary Go module dependency, in the tiny program in
``drkit/sandbox/go/ferretdb`` (FerretDB's own cmd panics when built by ``go install``: a generated
version file is missing from the module).  :func:`ensure_ferretdb` builds it with ``go build``
into ``$DRKIT_CACHE/bin/drkit-ferretdb`` and rebuilds when the Go sources change (their hash is
stored next to the binary).  FerretDB writes its oplog only once the capped collection
``local.oplog.rs`` exists, so :func:`start_mongodb` creates it after readiness.

``server="mongod"`` starts a real ``mongod`` (``$DRKIT_MONGOD``, the ``mongod`` argument, or PATH)
as a replica set of one (``rs0``) and waits until it is PRIMARY.  The default server is
``$DRKIT_MONGODB_SERVER`` or ``ferretdb``; ``auto`` means mongod when one is found, else FerretDB.

Layout of a work directory::

    workdir/data/            SQLite databases (FerretDB) or the dbpath (mongod)
    workdir/<kind>.log       the server's stdout and stderr

Readiness is a ``ping`` over the real protocol (pymongo, short timeouts), polled, never a fixed
sleep; a server that fails to start raises :class:`SandboxError` with its log tail, and whatever
was left running is killed.  :meth:`MongoInstance.stop` sends SIGTERM, then SIGKILL after a
timeout, and returns once the process is gone (the port is free again).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drkit.sandbox import SandboxError
from drkit.sandbox.ports import free_port
from drkit.sandbox.procs import log_tail
from drkit.sandbox.procs import pid_alive as _pid_alive
from drkit.sandbox.s3 import cache_dir

FERRETDB_VERSION = "v1.24.2"  # pinned in go/ferretdb/go.mod
GO_SRC = Path(__file__).parent / "go" / "ferretdb"
GO_FILES = ("main.go", "go.mod", "go.sum")
BINARY_NAME = "drkit-ferretdb"
HOST = "127.0.0.1"
REPLSET = "rs0"
OPLOG_SIZE = 64 * 1024 * 1024
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
BUILD_TIMEOUT = 1800.0
SERVERS = ("ferretdb", "mongod", "auto")
_POLL = 0.05


# --------------------------------------------------------------------------------------------
# Binaries


def find_go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise SandboxError("cannot build FerretDB: no `go` toolchain on PATH or in /usr/local/go (install Go >= 1.24)")
    return go


def ferretdb_path() -> Path:
    return cache_dir() / "bin" / BINARY_NAME


def _source_hash() -> str:
    digest = hashlib.sha256()
    for name in GO_FILES:
        digest.update(name.encode() + b"\0" + (GO_SRC / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _go_env() -> dict[str, str]:
    """The build's environment: module mode, caches under ``$DRKIT_CACHE/go`` unless set, no cgo."""
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -modcacherw"}
    env.setdefault("GOTOOLCHAIN", "local")  # never download another toolchain
    env.setdefault("GOMODCACHE", str(cache_dir() / "go" / "mod"))
    env.setdefault("GOCACHE", str(cache_dir() / "go" / "build"))
    env.setdefault("GOPATH", str(cache_dir() / "go" / "path"))
    return env


def ensure_ferretdb() -> Path:
    """Build the FerretDB program into ``$DRKIT_CACHE/bin`` unless it is there and current."""
    binary = ferretdb_path()
    stamp = binary.with_name(BINARY_NAME + ".sha256")
    want = _source_hash()
    if binary.is_file() and os.access(binary, os.X_OK) and stamp.is_file() and stamp.read_text().strip() == want:
        return binary
    go = find_go()
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferretdb-src-", dir=binary.parent) as src:
        # Built from a copy: go never writes into the source tree (which may be read-only).
        for name in GO_FILES:
            shutil.copyfile(GO_SRC / name, Path(src) / name)
        tmp = Path(src) / BINARY_NAME
        argv = [go, "build", "-trimpath", "-o", str(tmp), "."]
        try:
            res = subprocess.run(argv, cwd=src, env=_go_env(), capture_output=True, text=True,
                                 timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SandboxError(f"building FerretDB did not finish within {BUILD_TIMEOUT:.0f} s") from None
        if res.returncode != 0 or not tmp.is_file():
            tail = "\n".join((res.stderr or res.stdout).splitlines()[-30:])
            raise SandboxError(f"`go build` of {GO_SRC} (FerretDB {FERRETDB_VERSION}) failed:\n{tail}")
        os.replace(tmp, binary)
    stamp.write_text(want + "\n")
    return binary


def find_mongod(mongod: str | os.PathLike[str] | None = None) -> Path | None:
    """A ``mongod`` binary: the argument, else ``$DRKIT_MONGOD``, else PATH; None when absent."""
    explicit = mongod or os.environ.get("DRKIT_MONGOD")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SandboxError(f"mongod {path} (argument / DRKIT_MONGOD) is not an executable file")
        return path
    found = shutil.which("mongod")
    return Path(found) if found else None


# --------------------------------------------------------------------------------------------
# Processes


def _signal_and_wait(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float, *, term: bool = True) -> None:
    """SIGTERM ``pid`` (unless not ``term``), wait up to ``timeout``, then SIGKILL; return once it is gone."""
    steps = ((signal.SIGTERM, timeout),) if term else ()
    for sig, wait in (*steps, (signal.SIGKILL, 10.0)):
        if not _pid_alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(_POLL)
    if proc is not None:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    if _pid_alive(pid):
        raise SandboxError(f"process {pid} survived SIGKILL")


@dataclass
class MongoInstance:
    """A running (or stopped) sandbox MongoDB-wire server on 127.0.0.1."""

    kind: str  # "ferretdb" or "mongod"
    url: str
    port: int
    pid: int
    data_dir: Path
    log_path: Path
    binary: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self, **kwargs: Any) -> Any:
        """A ``pymongo.MongoClient`` for this server (close it when done)."""
        import pymongo

        opts: dict[str, Any] = {"serverSelectionTimeoutMS": 10000, "directConnection": True, **kwargs}
        return pymongo.MongoClient(self.url, **opts)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _pid_alive(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL after ``timeout``; return once the process is gone."""
        _signal_and_wait(self.pid, self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL (a crash); return once the process is gone.  The data dir stays as it is."""
        _signal_and_wait(self.pid, self.proc, 0.0, term=False)


# --------------------------------------------------------------------------------------------
# Starting


def _answers(inst: MongoInstance) -> bool:
    """True when ``ping`` succeeds.  A plain TCP connect first: pymongo's monitor, once refused,
    waits ~0.5 s before it tries again, which would dominate a sub-second start."""
    from pymongo.errors import PyMongoError

    try:
        socket.create_connection((HOST, inst.port), timeout=1).close()
    except OSError:
        return False
    try:
        with inst.client(serverSelectionTimeoutMS=2000, connectTimeoutMS=1000, socketTimeoutMS=2000) as client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def _wait_ready(inst: MongoInstance, timeout: float) -> None:
    """Poll until ``ping`` answers; SandboxError (after killing the server) otherwise."""
    deadline = time.monotonic() + timeout
    while not _answers(inst):
        if not inst.alive():
            rc = inst.proc.returncode if inst.proc is not None else None
            raise SandboxError(f"{inst.kind} exited with code {rc} before answering on {inst.url}"
                               f"; log {inst.log_path}:\n{inst.log_tail()}")
        if time.monotonic() > deadline:
            inst.kill()
            raise SandboxError(f"{inst.kind} did not answer on {inst.url} within {timeout:.0f} s"
                               f"; log {inst.log_path}:\n{inst.log_tail()}")
        time.sleep(_POLL)


def _ensure_oplog(inst: MongoInstance, size: int) -> None:
    """FerretDB writes its oplog only into an existing capped ``local.oplog.rs``: create it."""
    from pymongo.errors import CollectionInvalid

    with inst.client() as client:
        local = client["local"]
        if "oplog.rs" in local.list_collection_names():
            return
        try:
            local.create_collection("oplog.rs", capped=True, size=size)
        except CollectionInvalid:
            pass  # created concurrently


def _initiate_replset(inst: MongoInstance, timeout: float) -> None:
    """``replSetInitiate`` a replica set of one (unless done before) and wait for PRIMARY."""
    from pymongo.errors import OperationFailure, PyMongoError

    config = {"_id": REPLSET, "members": [{"_id": 0, "host": f"{HOST}:{inst.port}"}]}
    deadline = time.monotonic() + timeout
    with inst.client() as client:
        try:
            client.admin.command("replSetInitiate", config)
        except OperationFailure as exc:
            if exc.code != 23:  # AlreadyInitialized: a restarted data dir
                raise SandboxError(f"replSetInitiate on {inst.url} failed: {exc}") from None
        while True:
            try:
                if client.admin.command("hello").get("isWritablePrimary"):
                    return
            except PyMongoError:
                pass
            if not inst.alive() or time.monotonic() > deadline:
                inst.kill()
                raise SandboxError(f"mongod on {inst.url} did not become PRIMARY within {timeout:.0f} s"
                                   f"; log {inst.log_path}:\n{inst.log_tail()}")
            time.sleep(_POLL)


def _choose(server: str | None, mongod: str | os.PathLike[str] | None) -> tuple[str, Path]:
    server = server or ("mongod" if mongod else None) or os.environ.get("DRKIT_MONGODB_SERVER") or "ferretdb"
    if server not in SERVERS:
        raise SandboxError(f"unknown MongoDB server {server!r} (one of {', '.join(SERVERS)})")
    found = find_mongod(mongod) if server != "ferretdb" else None
    if server == "mongod" and found is None:
        raise SandboxError("server='mongod' but no mongod binary found: set DRKIT_MONGOD or put mongod on PATH")
    if found is not None:
        return "mongod", found
    return "ferretdb", ensure_ferretdb()


def _argv(kind: str, binary: Path, port: int, data_dir: Path, oplog_size: int) -> list[str]:
    if kind == "ferretdb":
        return [str(binary), f"-listen-addr={HOST}:{port}", f"-data-dir={data_dir}", "-log-level=info"]
    return [str(binary), "--dbpath", str(data_dir), "--port", str(port), "--bind_ip", HOST,
            "--replSet", REPLSET, "--oplogSize", str(max(1, oplog_size // (1024 * 1024))), "--nounixsocket"]


def _server_env() -> dict[str, str]:
    """A small environment for the server: nothing of the caller's beyond basics (no secrets)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def start_mongodb(
    workdir: Path,
    *,
    server: str | None = None,
    port: int | None = None,
    mongod: str | os.PathLike[str] | None = None,
    oplog_size: int = OPLOG_SIZE,
    timeout: float = START_TIMEOUT,
) -> MongoInstance:
    """Start a MongoDB-wire server in ``workdir`` (data in ``workdir/data``, reused if present).

    ``server``: ``ferretdb`` (built on first use), ``mongod`` (replica set of one) or ``auto``;
    default ``mongod`` when a ``mongod`` binary is passed, else ``$DRKIT_MONGODB_SERVER`` or ``ferretdb``.  Returns once the server answers ``ping``
    and ``local.oplog.rs`` exists (FerretDB: created capped, ``oplog_size`` bytes).  An auto-picked
    port is re-picked when another process grabbed it first.
    """
    kind, binary = _choose(server, mongod)
    workdir = Path(workdir).absolute()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{kind}.log"
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port or free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(_argv(kind, binary, chosen, data_dir, oplog_size), cwd=workdir,
                                    env=_server_env(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        inst = MongoInstance(kind, f"mongodb://{HOST}:{chosen}/", chosen, proc.pid, data_dir, log_path,
                             binary, proc)
        try:
            _wait_ready(inst, timeout)
        except SandboxError:
            inst.kill()
            busy = "address already in use" in inst.log_tail(5).lower()
            if not busy or attempt + 1 == attempts:
                raise
            continue
        try:
            if kind == "mongod":
                _initiate_replset(inst, timeout)
            else:
                _ensure_oplog(inst, oplog_size)
        except BaseException:
            inst.kill()
            raise
        return inst
    raise SandboxError(f"{kind} did not start")  # not reached


__all__ = ["MongoInstance", "ensure_ferretdb", "find_mongod", "start_mongodb"]


# --------------------------------------------------------------------------------------------
# ``drkit sandbox`` contract (see drkit.sandbox.kinds)


def sandbox_up(workdir: Path, nodes: int = 1) -> dict[str, Any]:
    """Start one server (``$DRKIT_MONGODB_SERVER`` picks the kind) and leave it running."""
    if nodes != 1:
        raise SandboxError("mongodb: --nodes is 1 (FerretDB has no replication; mongod runs a replica set of one)")
    inst = start_mongodb(workdir)
    inst.proc = None  # leave it running
    return {"url": inst.url, "port": inst.port, "pid": inst.pid, "pids": [inst.pid], "server": inst.kind,
            "data_dir": str(inst.data_dir), "binary": str(inst.binary), "log": str(inst.log_path)}


def sandbox_down(state: dict[str, Any]) -> None:
    """SIGTERM the server, SIGKILL after a timeout; return once it is gone."""
    _signal_and_wait(int(state["pid"]), None, STOP_TIMEOUT)


def ensure() -> str:
    """Build FerretDB into the cache (and name a mongod when one is configured or on PATH)."""
    binary = ensure_ferretdb()
    found = find_mongod()
    return f"FerretDB {FERRETDB_VERSION} at {binary}" + (f"; mongod at {found}" if found else "")
