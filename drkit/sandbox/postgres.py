"""Throw-away PostgreSQL clusters: a primary, an optional streaming standby, restored data dirs.

PostgreSQL refuses to run as root, so when this runs as root every server command (``initdb``,
``pg_ctl``, ``pg_basebackup``) runs as an unprivileged OS user (``postgres`` by default) through
``runuser -u USER --`` with an argument list (never a shell string).  That user must be able to
reach the work directory: every parent needs the execute bit for it (``/tmp/x`` or
``/var/tmp/x`` are fine; pytest's ``tmp_path`` under ``/tmp/pytest-of-root`` (mode 0700) is not).
The work directory itself is created if needed and chowned to that user.

Layout of a work directory::

    workdir/                 owned by the OS user; the unix socket lives here
    workdir/pgdata/          the data directory (initdb --data-checksums, -U postgres)
    workdir/postgresql.log   server log (pg_ctl -l)
    workdir/standby/         the standby's work directory, when one is started

Authentication is ``trust`` on the unix socket and on 127.0.0.1 only; the server listens on
127.0.0.1 and a free port.  Readiness is polled with ``pg_isready`` (the real protocol), never a
fixed sleep; a server that fails to start raises :class:`SandboxError` with the log tail.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.sandbox import SandboxError
from drkit.sandbox.ports import free_port
from drkit.sandbox.procs import log_tail
from drkit.sandbox.procs import pid_alive as _pid_alive

if TYPE_CHECKING:
    import psycopg

DEFAULT_OS_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
LOG_NAME = "postgresql.log"
DATA_NAME = "pgdata"
STANDBY_NAME = "standby"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_POLL = 0.05
_SOCKET_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_MARK = "# --- drkit sandbox settings (last value wins) ---"

SettingValue = str | int | float | bool


# --------------------------------------------------------------------------------------------
# Binaries, users, processes


def find_bin_dir(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and friends.

    Order: the ``bin_dir`` argument, ``$DRKIT_PG_BIN``, ``pg_config --bindir``, then the newest
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout).
    """
    candidates: list[Path] = []
    explicit = bin_dir or os.environ.get("DRKIT_PG_BIN")
    if explicit:
        path = Path(explicit)
        if not (path / "initdb").is_file():
            raise SandboxError(f"no initdb in PostgreSQL bin dir {path} (bin_dir / DRKIT_PG_BIN)")
        return path
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out))

    def version_key(path: str) -> tuple[int, ...]:
        version = Path(path).parent.name
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    candidates.extend(
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    )
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise SandboxError(
        "PostgreSQL server binaries not found (tried pg_config --bindir and "
        "/usr/lib/postgresql/*/bin); install the server (scripts/install.sh) or set DRKIT_PG_BIN"
    )


def _resolve_os_user(os_user: str | None) -> str:
    """The OS user the server runs as: given, else ``postgres`` as root, else ourselves."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if os_user is None:
        os_user = DEFAULT_OS_USER if os.geteuid() == 0 else me
    try:
        entry = pwd.getpwnam(os_user)
    except KeyError:
        raise SandboxError(
            f"OS user {os_user!r} does not exist; PostgreSQL needs a non-root user to run as "
            "(the postgresql package creates 'postgres')"
        ) from None
    if entry.pw_uid == 0:
        raise SandboxError("PostgreSQL refuses to run as root: choose another os_user")
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise SandboxError(f"only root can run the server as another user ({os_user!r}); we are {me!r}")
    return os_user


def _as_user(os_user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``os_user``: wrapped in ``runuser`` when we are root and they are not us."""
    if os.geteuid() == 0 and pwd.getpwnam(os_user).pw_uid != 0:
        return ["runuser", "-u", os_user, "--", *argv]
    return argv


def _server_env(bin_dir: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    """A small, explicit environment for server processes (archive_command inherits it).

    Nothing of the caller's environment is passed except PATH-like basics and what ``extra``
    names, so stray secrets and PG* variables never reach the server or its log.
    """
    env = {
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    if extra:
        env.update(extra)
    return env


def _run(
    argv: list[str], *, env: Mapping[str, str], timeout: float, what: str, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{what} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise SandboxError(f"{what} could not be run: {exc}") from None
    return proc


def _descendants(pid: int) -> list[int]:
    """Processes whose parent chain leads to ``pid`` (the postmaster's children), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def _wait_stale_reaped(data_dir: Path, timeout: float) -> None:
    """After a crash (``kill``), wait until the dead postmaster's zombie is reaped.

    PostgreSQL refuses to start while the pid in a stale postmaster.pid exists, and a zombie
    does exist until its parent (init, which adopted it) reaps it; some init processes do that
    only every few seconds.
    """
    pid = _read_pid(data_dir)
    if pid is None or _pid_alive(pid):
        return  # no stale file, or a live server: PostgreSQL itself reports that one
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            raise SandboxError(
                f"the crashed postmaster {pid} of {data_dir} was not reaped within "
                f"{timeout:.0f} s (zombie); its parent does not reap children"
            )
        time.sleep(_POLL)


def _read_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


# --------------------------------------------------------------------------------------------
# Directories and configuration


def _check_traversable(path: Path, os_user: str) -> None:
    """Fail clearly when ``os_user`` cannot reach ``path`` (a parent lacks the execute bit)."""
    entry = pwd.getpwnam(os_user)
    groups = set(os.getgrouplist(os_user, entry.pw_gid))
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise SandboxError(
                f"OS user {os_user!r} cannot enter {parent} (mode {st.st_mode & 0o777:o}), so it "
                f"cannot reach {path}; put sandbox work directories under /tmp or /var/tmp "
                "(e.g. tempfile.mkdtemp(dir='/var/tmp')), not under a private directory"
            )


def _prepare_dir(path: Path, os_user: str) -> None:
    """Create ``path`` if needed, make it owned by ``os_user`` and check it is reachable."""
    path.mkdir(parents=True, exist_ok=True)
    _check_traversable(path, os_user)
    entry = pwd.getpwnam(os_user)
    st = path.stat()
    if os.geteuid() == 0 and (st.st_uid != entry.pw_uid or st.st_gid != entry.pw_gid):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    if st.st_mode & 0o755 != 0o755:
        os.chmod(path, 0o755)


def _own_tree(data_dir: Path, os_user: str) -> None:
    """As root: give a laid-down (e.g. restored) data dir to ``os_user``, mode 0700 at the top."""
    entry = pwd.getpwnam(os_user)
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(data_dir):
            for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                st = os.lstat(name)
                if st.st_uid != entry.pw_uid or st.st_gid != entry.pw_gid:
                    os.lchown(name, entry.pw_uid, entry.pw_gid)
    if data_dir.stat().st_mode & 0o777 not in (0o700, 0o750):
        os.chmod(data_dir, 0o700)


def _check_socket_dir(socket_dir: Path, port: int) -> None:
    sock = f"{socket_dir.resolve()}/.s.PGSQL.{port}"
    if len(sock.encode()) > _SOCKET_PATH_MAX:
        raise SandboxError(
            f"unix socket path {sock} is longer than {_SOCKET_PATH_MAX} bytes; use a shorter work directory"
        )


def _conf_value(value: SettingValue) -> str:
    """A value as written in postgresql.conf / ALTER SYSTEM: a quoted literal or a number."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _check_name(name: str) -> str:
    if not _SETTING_NAME.match(name):
        raise SandboxError(f"not a PostgreSQL setting name: {name!r}")
    return name


def _append_settings(conf: Path, settings: Mapping[str, SettingValue]) -> None:
    text = conf.read_text() if conf.exists() else ""
    lines = [] if _MARK in text else ["", _MARK]
    lines += [f"{_check_name(k)} = {_conf_value(v)}" for k, v in settings.items()]
    with open(conf, "a") as fh:
        fh.write("\n".join(lines) + "\n")


_HBA = """\
# drkit sandbox: trust on the unix socket and on 127.0.0.1 only
local   all             all                     trust
host    all             all     127.0.0.1/32    trust
local   replication     all                     trust
host    replication     all     127.0.0.1/32    trust
"""


# --------------------------------------------------------------------------------------------
# The instance


@dataclass
class PgInstance:
    """A running (or stopped) sandbox PostgreSQL server.

    ``dsn`` is a libpq connection string over TCP to 127.0.0.1; ``socket_dir`` holds the unix
    socket.  ``standby`` is the streaming standby started together with this primary, if any:
    :meth:`stop` stops it too, :meth:`kill` does not (a lost primary with a live standby).
    """

    host: str
    port: int
    user: str
    dbname: str
    dsn: str
    data_dir: Path
    bin_dir: Path
    os_user: str
    log_path: Path
    pid: int | None
    socket_dir: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)
    standby: PgInstance | None = None
    application_name: str | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _server_cmd(self, argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return _run(
            _as_user(self.os_user, argv), env=_server_env(self.bin_dir, self.env), timeout=timeout, what=what
        )

    def conninfo(self, dbname: str | None = None, **params: str | int) -> str:
        """A libpq DSN for this server (optionally another database or extra parameters)."""
        parts = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            **params,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())

    # -- state ---------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True while the postmaster process is alive."""
        if self.pid is None:
            self.pid = _read_pid(self.data_dir)
        return self.pid is not None and _pid_alive(self.pid)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start this (stopped or killed) server again on the same port and wait until ready."""
        fresh = start_existing(
            self.data_dir,
            self.port,
            self.os_user,
            bin_dir=self.bin_dir,
            socket_dir=self.socket_dir,
            log_path=self.log_path,
            env=self.env,
            timeout=timeout,
        )
        self.pid = fresh.pid

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (and a standby started with it); return once no process is left.

        ``mode`` is pg_ctl's: ``smart``, ``fast`` or ``immediate``.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise SandboxError(f"unknown stop mode {mode!r} (smart, fast or immediate)")
        if self.standby is not None:
            self.standby.stop(mode, timeout)
        if not self.is_running():
            self.pid = None
            return
        assert self.pid is not None
        family = [self.pid, *_descendants(self.pid)]
        proc = self._server_cmd(
            [
                self._bin("pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            "pg_ctl stop",
            timeout + 10,
        )
        left = _wait_gone(family, timeout)
        if left:
            raise SandboxError(
                f"PostgreSQL on port {self.port} did not stop within {timeout:.0f} s "
                f"(pids {left} alive; pg_ctl said: {proc.stderr.strip()})\n{log_tail(self.log_path)}"
            )
        self.pid = None

    def kill(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL the postmaster and its children, as in a machine crash; wait until all are gone.

        The data dir is left as a crash leaves it (stale postmaster.pid, unfinished WAL).  A
        standby started with this primary keeps running.
        """
        if not self.is_running():
            return
        assert self.pid is not None
        family = [self.pid, *_descendants(self.pid)]
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = _wait_gone(family, timeout)
        if left:
            raise SandboxError(f"processes {left} survived SIGKILL for {timeout:.0f} s")
        self.pid = None

    def reload(self, timeout: float = 30.0) -> None:
        """Re-read the configuration; return once new sessions see it."""
        before = self.psql("SELECT pg_conf_load_time()")
        proc = self._server_cmd(
            [self._bin("pg_ctl"), "reload", "-D", str(self.data_dir)], "pg_ctl reload", timeout
        )
        if proc.returncode != 0:
            raise SandboxError(f"pg_ctl reload failed: {proc.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while self.psql("SELECT pg_conf_load_time()") == before:
            if time.monotonic() > deadline:
                raise SandboxError(f"configuration was not reloaded within {timeout:.0f} s")
            time.sleep(_POLL)

    def set_settings(self, settings: Mapping[str, SettingValue]) -> list[str]:
        """``ALTER SYSTEM SET`` each setting, reload, and return those that need a restart."""
        statements = [f"ALTER SYSTEM SET {_check_name(k)} = {_conf_value(v)};" for k, v in settings.items()]
        self.psql("\n".join(statements))
        self.reload()
        if not settings:
            return []
        names = ", ".join(_conf_value(k.lower()) for k in settings)
        out = self.psql(f"SELECT name FROM pg_settings WHERE pending_restart AND name IN ({names})")
        return [line for line in out.splitlines() if line]

    # -- SQL -------------------------------------------------------------------------------------

    def psql(self, sql: str, dbname: str | None = None, timeout: float = 120.0) -> str:
        """Run ``sql`` (one or more statements) with psql; return unaligned, tuples-only output.

        Columns are separated by ``|``, rows by newlines; the trailing newline is stripped.
        Any SQL error raises :class:`SandboxError` with psql's message.
        """
        argv = [
            self._bin("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            dbname or self.dbname,
            "-f",
            "-",
        ]
        env = _server_env(self.bin_dir, None)
        proc = _run(argv, env=env, timeout=timeout, what="psql", input_text=sql)
        if proc.returncode != 0:
            raise SandboxError(f"psql on port {self.port} failed: {proc.stderr.strip()}")
        return proc.stdout.rstrip("\n")

    def connect(
        self, dbname: str | None = None, autocommit: bool = True, **kwargs: Any
    ) -> psycopg.Connection[Any]:
        """A psycopg 3 connection over TCP (autocommit by default)."""
        import psycopg

        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit, **kwargs)

    def in_recovery(self) -> bool:
        """True on a standby or a server still replaying archived WAL."""
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def wait_recovery_done(self, timeout: float = 300.0) -> None:
        """Wait until archive recovery ended and the server was promoted (accepts writes)."""
        deadline = time.monotonic() + timeout
        while self.in_recovery():
            if not self.is_running():
                raise SandboxError(f"server exited during recovery\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise SandboxError(f"still in recovery after {timeout:.0f} s\n{log_tail(self.log_path)}")
            time.sleep(_POLL)


# --------------------------------------------------------------------------------------------
# Starting servers


def _pg_ctl_start(inst: PgInstance, timeout: float, options: list[str] | None = None) -> tuple[bool, str]:
    """Run ``pg_ctl start -w`` and then poll ``pg_isready``.  Return (ok, why-not)."""
    argv = [
        inst._bin("pg_ctl"),
        "start",
        "-D",
        str(inst.data_dir),
        "-l",
        str(inst.log_path),
        "-w",
        "-t",
        str(max(1, int(timeout))),
    ]
    if options:
        # pg_ctl passes -o through /bin/sh: quote each word; these are ports and paths only.
        argv += ["-o", " ".join(shlex.quote(o) for o in options)]
    proc = inst._server_cmd(argv, "pg_ctl start", timeout + 15)
    inst.pid = _read_pid(inst.data_dir)
    if proc.returncode != 0:
        return False, (proc.stderr.strip() or proc.stdout.strip())
    deadline = time.monotonic() + timeout
    isready = [
        inst._bin("pg_isready"),
        "-q",
        "-h",
        str(inst.socket_dir),
        "-p",
        str(inst.port),
        "-U",
        inst.user,
        "-d",
        inst.dbname,
        "-t",
        "2",
    ]
    env = _server_env(inst.bin_dir, None)
    while True:
        if _run(isready, env=env, timeout=10, what="pg_isready").returncode == 0:
            return True, ""
        if not inst.is_running():
            return False, "the server exited"
        if time.monotonic() > deadline:
            return False, f"not accepting connections after {timeout:.0f} s"
        time.sleep(_POLL)


def _fail(inst: PgInstance, what: str, why: str) -> SandboxError:
    """Kill what is left of a failed start and build the error (with the log tail)."""
    try:
        inst.kill(timeout=15)
    except SandboxError:
        pass
    return SandboxError(f"{what} failed: {why}\n--- tail of {inst.log_path} ---\n{log_tail(inst.log_path)}")


def start_existing(
    data_dir: Path,
    port: int,
    os_user: str | None = None,
    *,
    bin_dir: str | os.PathLike[str] | None = None,
    socket_dir: Path | None = None,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> PgInstance:
    """Start a laid-down data dir (e.g. a restore) on 127.0.0.1:``port``; wait until ready.

    ``os_user`` defaults to the data dir's owner (or ``postgres`` when root owns it).  As root,
    the data dir is given to that user first (a restore running as root lays files down as
    root).  The socket and the log go to ``socket_dir`` (default: the data dir's parent, which
    is chowned to the user like a work directory).  ``port``, the socket directory and
    ``listen_addresses`` are passed on the command line, overriding the data dir's config.
    If recovery is configured, this returns once the server accepts connections (hot standby)
    or recovery ended; use :meth:`PgInstance.wait_recovery_done` to wait for promotion.
    """
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "PG_VERSION").is_file():
        raise SandboxError(f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION)")
    if os_user is None:
        owner = pwd.getpwuid(data_dir.stat().st_uid).pw_name
        os_user = None if owner == "root" else owner
    os_user = _resolve_os_user(os_user)
    bins = find_bin_dir(bin_dir)
    socket_dir = Path(socket_dir or data_dir.parent).resolve()
    _prepare_dir(socket_dir, os_user)
    _check_traversable(data_dir, os_user)
    _own_tree(data_dir, os_user)
    _check_socket_dir(socket_dir, port)
    inst = _instance(data_dir, port, bins, os_user, Path(log_path or socket_dir / LOG_NAME), socket_dir, env)
    _ensure_log(inst)
    _wait_stale_reaped(data_dir, timeout)
    options = [
        "-p",
        str(port),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        f"unix_socket_directories={socket_dir}",
    ]
    ok, why = _pg_ctl_start(inst, timeout, options)
    if not ok:
        raise _fail(inst, f"starting PostgreSQL from {data_dir} on port {port}", why)
    return inst


def _instance(
    data_dir: Path,
    port: int,
    bin_dir: Path,
    os_user: str,
    log_path: Path,
    socket_dir: Path,
    env: Mapping[str, str] | None,
) -> PgInstance:
    inst = PgInstance(
        host=HOST,
        port=port,
        user=SUPERUSER,
        dbname="postgres",
        dsn="",
        data_dir=data_dir,
        bin_dir=bin_dir,
        os_user=os_user,
        log_path=log_path,
        pid=None,
        socket_dir=socket_dir,
        env=dict(env or {}),
    )
    inst.dsn = inst.conninfo()
    return inst


def _ensure_log(inst: PgInstance) -> None:
    """pg_ctl opens the log as the OS user: make sure it may (a root-made log would block it)."""
    inst.log_path.touch(exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(inst.os_user)
        os.chown(inst.log_path, entry.pw_uid, entry.pw_gid)


def _start_new(inst: PgInstance, port_given: bool, timeout: float, what: str) -> None:
    """Start a freshly made data dir; when the port was auto-picked and got taken, pick again."""
    for attempt in range(3):
        ok, why = _pg_ctl_start(inst, timeout)
        if ok:
            return
        tail = log_tail(inst.log_path, 15)
        if port_given or attempt == 2 or "Address already in use" not in tail:
            raise _fail(inst, what, why)
        inst.kill(timeout=15)
        inst.port = free_port()
        inst.dsn = inst.conninfo()
        _append_settings(inst.data_dir / "postgresql.conf", {"port": inst.port})


def start_postgres(
    workdir: Path,
    *,
    port: int | None = None,
    archive_command: str | None = None,
    archive_timeout: int | None = None,
    settings: Mapping[str, SettingValue] | None = None,
    standby: bool = False,
    os_user: str | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> PgInstance:
    """initdb a new cluster in ``workdir/pgdata``, start it, and wait until it accepts connections.

    - runs as ``os_user`` (default ``postgres`` when root, else the current user); ``workdir``
      is created/chowned for it and every parent must be enterable by it;
    - listens on 127.0.0.1:``port`` (a free one by default) and on a socket in ``workdir``;
    - ``wal_level=replica``, replication slots and senders for standbys and pg_basebackup;
    - ``archive_mode=on`` with ``archive_command`` when one is given (it runs as ``os_user``
      with the environment ``env`` plus PATH and locale — nothing else of ours);
    - ``settings`` are written to postgresql.conf last, so they override the above;
    - ``standby=True`` also starts a streaming standby in ``workdir/standby`` (see
      :func:`start_standby`), reachable as ``.standby`` of the returned instance.
    """
    workdir = Path(workdir).resolve()
    user = _resolve_os_user(os_user)
    bins = find_bin_dir(bin_dir)
    _prepare_dir(workdir, user)
    data_dir = workdir / DATA_NAME
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SandboxError(f"{data_dir} exists and is not empty; use start_existing() for it")
    chosen = port or free_port()
    _check_socket_dir(workdir, 65535)
    inst = _instance(data_dir, chosen, bins, user, workdir / LOG_NAME, workdir, env)

    initdb = inst._server_cmd(
        [
            inst._bin("initdb"),
            "-D",
            str(data_dir),
            "-U",
            SUPERUSER,
            "--data-checksums",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
        ],
        "initdb",
        120,
    )
    if initdb.returncode != 0:
        raise SandboxError(f"initdb in {data_dir} failed:\n{(initdb.stdout + initdb.stderr)[-4000:]}")
    (data_dir / "pg_hba.conf").write_text(_HBA)

    conf: dict[str, SettingValue] = {
        "listen_addresses": HOST,
        "port": chosen,
        "unix_socket_directories": str(workdir),
        "wal_level": "replica",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "hot_standby": True,
        "wal_keep_size": "64MB",
        "logging_collector": False,
        "log_line_prefix": "%m [%p] ",
    }
    if archive_command is not None:
        conf["archive_mode"] = "on"
        conf["archive_command"] = archive_command
    if archive_timeout is not None:
        conf["archive_timeout"] = int(archive_timeout)
    conf.update(settings or {})
    _append_settings(data_dir / "postgresql.conf", conf)
    if os.geteuid() == 0:
        _own_tree(data_dir, user)
    _ensure_log(inst)
    _start_new(inst, port is not None, timeout, f"starting new PostgreSQL in {data_dir}")
    if standby:
        try:
            inst.standby = start_standby(inst, workdir / STANDBY_NAME, timeout=timeout)
        except BaseException:
            inst.stop("immediate")
            raise
    return inst


def start_standby(
    primary: PgInstance,
    workdir: Path,
    *,
    port: int | None = None,
    settings: Mapping[str, SettingValue] | None = None,
    slot: bool = True,
    timeout: float = START_TIMEOUT,
) -> PgInstance:
    """Clone ``primary`` with ``pg_basebackup -R`` into ``workdir/pgdata`` and start it as a
    streaming standby on its own port; return once the primary's ``pg_stat_replication``
    shows it ``streaming``.  With ``slot`` a physical replication slot keeps the WAL it needs.
    """
    workdir = Path(workdir).resolve()
    user = primary.os_user
    _prepare_dir(workdir, user)
    data_dir = workdir / DATA_NAME
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SandboxError(f"{data_dir} exists and is not empty")
    chosen = port or free_port()
    _check_socket_dir(workdir, 65535)
    app = f"drkit_standby_{chosen}"
    inst = _instance(data_dir, chosen, primary.bin_dir, user, workdir / LOG_NAME, workdir, primary.env)
    inst.application_name = app
    source = f"host={primary.socket_dir} port={primary.port} user={primary.user} application_name={app}"
    if slot:
        # Reserved now, before the backup starts: the standby finds every WAL segment it needs.
        # (pg_basebackup -C/-S would force -X stream, ~0.5 s slower than -X fetch here.)
        primary.psql(f"SELECT pg_create_physical_replication_slot({_conf_value(app)}, true)")
    # -X fetch: the WAL needed to make the copy consistent is fetched at the end (the slot or
    # wal_keep_size keeps it); -R writes primary_conninfo and standby.signal.
    argv = [inst._bin("pg_basebackup"), "-D", str(data_dir), "-d", source]
    argv += ["-X", "fetch", "-R", "-c", "fast", "--no-sync"]
    base = inst._server_cmd(argv, "pg_basebackup", 600)
    if base.returncode != 0:
        if slot:
            primary.psql(f"SELECT pg_drop_replication_slot({_conf_value(app)})")
        raise SandboxError(f"pg_basebackup from port {primary.port} failed: {base.stderr.strip()}")
    conf: dict[str, SettingValue] = {
        "port": chosen,
        "unix_socket_directories": str(workdir),
        "hot_standby": True,
    }
    if slot:
        conf["primary_slot_name"] = app
    conf.update(settings or {})
    _append_settings(data_dir / "postgresql.conf", conf)
    _ensure_log(inst)
    _start_new(inst, True, timeout, f"starting standby in {data_dir}")
    deadline = time.monotonic() + timeout
    query = f"SELECT state FROM pg_stat_replication WHERE application_name = {_conf_value(app)}"
    while primary.psql(query) != "streaming":
        if not inst.is_running():
            raise _fail(inst, "standby", "the standby exited")
        if time.monotonic() > deadline:
            raise _fail(inst, "standby", f"not streaming after {timeout:.0f} s")
        time.sleep(_POLL)
    return inst


__all__ = [
    "PgInstance",
    "find_bin_dir",
    "log_tail",
    "start_existing",
    "start_postgres",
    "start_standby",
]


# --------------------------------------------------------------------------------------------
# ``drkit sandbox`` contract (see drkit.sandbox.kinds)


def sandbox_up(workdir: Path, nodes: int = 1) -> dict[str, Any]:
    """Start a primary (and with ``nodes`` 2 a streaming standby) in ``workdir``; leave them running."""
    if nodes not in (1, 2):
        raise SandboxError("postgres: --nodes is 1 (primary) or 2 (primary + streaming standby)")
    inst = start_postgres(workdir, standby=nodes > 1)
    sb = inst.standby
    return {
        "dsn": inst.dsn, "port": inst.port, "pid": inst.pid, "data_dir": str(inst.data_dir),
        "bin_dir": str(inst.bin_dir), "os_user": inst.os_user, "log": str(inst.log_path),
        "standby": ({"dsn": sb.dsn, "port": sb.port, "pid": sb.pid, "data_dir": str(sb.data_dir)} if sb else None),
        "pids": [inst.pid] + ([sb.pid] if sb else []),
    }


def sandbox_down(state: dict[str, Any]) -> None:
    """Stop what :func:`sandbox_up` started: the standby first, then the primary (pg_ctl fast)."""
    dirs = [state["data_dir"]] + ([state["standby"]["data_dir"]] if state.get("standby") else [])
    pg_ctl = str(Path(state["bin_dir"]) / "pg_ctl")
    for data_dir in reversed(dirs):
        subprocess.run(_as_user(state["os_user"], [pg_ctl, "-D", data_dir, "-m", "fast", "-w", "stop"]),
                       capture_output=True, check=False, timeout=120)


def ensure() -> str:
    """PostgreSQL comes from the OS packages (scripts/install.sh); report which binaries are used."""
    return str(find_bin_dir())
