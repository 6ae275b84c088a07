"""Physical restore: lay a base backup down, configure recovery to T, optionally start and wait."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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


def prepare_target(target: Path) -> None:
    if target.exists():
        if any(target.iterdir()):
            raise DrkitError(
                f"target directory {target} is not empty; restore into an empty or new directory "
                "(drkit never overwrites a data directory)"
            )
    else:
        target.mkdir(parents=True)
    target.chmod(0o700)


def extract_base(repo: Repository, manifest: Manifest, target: Path) -> int:
    """Stream base.tar from the repository into ``target``; return bytes restored."""
    ref = manifest.stream("base.tar")
    with repo.open_stream(ref) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            _check_member(member, manifest.id)
            tar.extract(member, target, set_attrs=True)
    return ref.size


def _check_member(member: tarfile.TarInfo, backup_id: str) -> None:
    """Refuse anything that could escape the target directory (checked on every Python)."""
    bad = member.name.startswith("/") or ".." in Path(member.name).parts
    if member.issym() or member.islnk():
        bad = bad or member.linkname.startswith("/") or ".." in Path(member.linkname).parts
    if member.isdev() or member.isfifo():
        bad = True
    if bad:
        raise DrkitError(f"refusing unsafe entry {member.name!r} in backup {backup_id}")


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


def start_and_wait(opts: PgOptions, target: Path, port: int, timeout: float = 3600.0) -> dict[str, Any]:
    """Start the restored server and wait until recovery finished and it accepts writes."""
    import psycopg

    log_path = target / "drkit-restore.log"
    cmd = _as_user([opts.tool("pg_ctl"), "-D", str(target), "-l", str(log_path), "-w", "-t", "60", "start"], opts.os_user)
    subprocess.run(cmd, capture_output=True, check=False, timeout=120)
    deadline = time.monotonic() + timeout
    last_err = ""
    while time.monotonic() < deadline:
        if not (target / "postmaster.pid").exists():
            raise SourceError(f"the restored server stopped during recovery:\n{_tail(log_path)}")
        try:
            with psycopg.connect(
                host=str(target), port=port, user="postgres", dbname="postgres",
                connect_timeout=3, autocommit=True,
            ) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()"
                ).fetchone()
                if row and not row[0]:
                    return {
                        "log": str(log_path),
                        "last_replayed_commit": row[1].isoformat() if row[1] else None,
                        "last_replayed_lsn": str(row[2]) if row[2] else None,
                    }
        except psycopg.Error as exc:
            last_err = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        time.sleep(0.2)
    raise SourceError(f"recovery did not finish within {timeout:.0f} s ({last_err}):\n{_tail(log_path)}")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"
