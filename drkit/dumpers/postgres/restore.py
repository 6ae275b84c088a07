"""Physical restore: lay a base backup down, configure recovery to T, optionally start and wait."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from drkit.dumpers.targets import clear_target, prepare_target  # noqa: F401 - re-exported
from drkit.errors import DrkitError, SourceError
from drkit.repository import Manifest, Repository

from .options import PgOptions


def drkit_executable() -> str:
    """The drkit command the server's restore_command should run (same install as this one)."""
    candidate = Path(sys.executable).parent / "drkit"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("drkit")
    if not found:
        raise DrkitError("cannot find the drkit executable for restore_command; put it on PATH")
    return found


def extract_base(repo: Repository, manifest: Manifest, target: Path,
                 relink: dict[str, Path] | None = None) -> int:
    """Stream base.tar from the repository into ``target``; return bytes restored.  ``relink``:
    the tablespace links and where they lead now (:mod:`.tablespaces`)."""
    from drkit.repository.reader import iter_stream

    from .untar import extract

    ref = manifest.stream("base.tar")
    extract(iter_stream(repo, ref), target, relink)
    return ref.size


_PATH_SETTINGS = re.compile(
    r"^\s*(data_directory|hba_file|ident_file|external_pid_file|include_dir|include_if_exists|include)\b"
)


def restore_config_files(repo: Repository, manifest: Manifest, target: Path) -> list[str]:
    """Lay down configuration that lived outside the data directory, made self-contained:
    settings pointing at the old locations are commented out (and listed in the result)."""
    disabled: list[str] = []
    for ref in manifest.streams:
        if not ref.name.startswith("config/"):
            continue
        dest = target / ref.name.split("/", 1)[1]
        if dest.exists():
            continue
        with repo.open_stream(ref) as src:
            text = src.read().decode(errors="replace")
        if dest.name == "postgresql.conf":
            lines = []
            for line in text.splitlines():
                if _PATH_SETTINGS.match(line):
                    disabled.append(line.strip())
                    line = "# disabled by drkit restore: " + line
                lines.append(line)
            text = "\n".join(lines) + "\n"
        dest.write_text(text)
    return disabled


def write_recovery_config(
    target: Path, *, config_path: Path | None, source: str, point_in_time: datetime | None,
    port: int | None, keep_archiving: bool, socket_dir: Path | None, until: str | None = None,
    timeline: int | None = None,
) -> dict[str, Any]:
    drkit = drkit_executable()
    parts = [drkit]
    if config_path:
        parts += ["--config", str(config_path)]
    parts += ["pg", "wal-fetch", "--source", source]
    if until:
        parts += ["--until", until]
    parts += ["%f", "%p"]
    restore_command = " ".join(shlex.quote(p) if p not in ("%f", "%p") else f'"{p}"' for p in parts)
    settings: dict[str, str] = {
        "restore_command": restore_command,
        # The timeline drkit planned on, never "whatever is newest in the archive".
        "recovery_target_timeline": str(timeline) if timeline else "latest",
        "recovery_target_action": "promote",
    }
    if point_in_time is not None:
        settings["recovery_target_time"] = point_in_time.isoformat(sep=" ")
        settings["recovery_target_inclusive"] = "true"
    if not keep_archiving:
        settings["archive_mode"] = "off"
    if port:
        settings["port"] = str(port)
    if socket_dir:
        settings["unix_socket_directories"] = str(socket_dir)
    auto = target / "postgresql.auto.conf"
    lines = ["", "# --- added by drkit restore ---"]
    for key, value in settings.items():
        lines.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'")
    with open(auto, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    for stale in ("standby.signal", "postmaster.pid", "postmaster.opts"):
        (target / stale).unlink(missing_ok=True)
    (target / "recovery.signal").write_text("")
    (target / "pg_wal").mkdir(exist_ok=True)
    return settings


def stop_server(opts: PgOptions, target: Path) -> None:
    """Stop a server started from ``target`` (fast shutdown), e.g. after a failed check."""
    subprocess.run(
        _as_user([opts.tool("pg_ctl"), "-D", str(target), "-m", "fast", "-w", "stop"], opts.os_user),
        capture_output=True, check=False, timeout=120,
    )


def chown_tree(target: Path, os_user: str) -> None:
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(os_user)
    except KeyError:
        raise DrkitError(f"OS user {os_user!r} (sources.*.os_user) does not exist") from None
    for root, dirs, files in os.walk(target):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def _as_user(cmd: list[str], os_user: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", os_user, "--", *cmd]
    return cmd


_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_XACT = re.compile(r"last completed transaction was at log time (\S+ \S+)")


def cluster_state(opts: PgOptions, target: Path) -> str:
    """The data directory's state from pg_control ("in production", "in archive recovery"...)."""
    proc = subprocess.run(
        [opts.tool("pg_controldata"), "-D", str(target)], capture_output=True, text=True,
        env={**opts.env(), "LC_ALL": "C", "LANG": "C"}, check=False, timeout=30,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("Database cluster state:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


SOCKET_PATH_MAX = 107  # sun_path: a Unix socket's path, including .s.PGSQL.<port>, must fit


def socket_dir_for(target: Path, port: int) -> Path:
    """Where the restored server puts its Unix socket: the target directory (private to this
    restore), or ``/tmp`` when the socket's path there would exceed the kernel's limit (a
    restore into a deep directory must not fail at start; /tmp always exists, also after a
    reboot, and the port keeps the socket's name unique)."""
    if len(str(target / f".s.PGSQL.{port}")) <= SOCKET_PATH_MAX:
        return target
    return Path("/tmp")


def start_and_wait(opts: PgOptions, target: Path, port: int, timeout: float = 3600.0,
                   socket_dir: Path | None = None) -> dict[str, Any]:
    """Start the restored server; wait until recovery finished and it accepts connections.

    Progress is read from pg_control and the server log, not through a login, so it works
    whatever authentication the restored pg_hba.conf demands.
    """
    log_path = target / "drkit-restore.log"
    cmd = _as_user([opts.tool("pg_ctl"), "-D", str(target), "-l", str(log_path), "-w", "-t", "60", "start"], opts.os_user)
    subprocess.run(cmd, capture_output=True, check=False, timeout=120)
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        if not (target / "postmaster.pid").exists():
            raise SourceError(f"the restored server stopped during recovery:\n{_tail(log_path)}")
        state = cluster_state(opts, target)
        if state == "in production":
            ready = subprocess.run(
                [opts.tool("pg_isready"), "-q", "-h", str(socket_dir or target), "-p", str(port), "-t", "2"],
                env=opts.env(), check=False, timeout=30,
            )
            if ready.returncode == 0:
                text = log_path.read_text(errors="replace") if log_path.exists() else ""
                redo = _REDO_DONE.findall(text)
                last = _LAST_XACT.findall(text)
                return {
                    "log": str(log_path),
                    "last_replayed_lsn": redo[-1] if redo else None,
                    "last_replayed_commit": _log_time(last[-1]) if last else None,
                }
        time.sleep(0.2)
    raise SourceError(
        f"recovery did not finish within {timeout:.0f} s (cluster state: {state}):\n{_tail(log_path)}"
    )


def _log_time(text: str) -> str | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return text


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"
