"""A PostgreSQL source archiving into a drkit repository, for integration tests.

Everything here is real: a sandbox PostgreSQL whose archive_command runs the installed drkit
CLI as the postgres OS user, a real repository (local directory or an S3 server).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import yaml

from drkit.sandbox.postgres import PgInstance, start_postgres

DRKIT = str(Path(sys.executable).parent / "drkit")
WORK_ROOT = Path(os.environ.get("DRKIT_TEST_ROOT", "/var/tmp/drkit-tests"))


def workdir(tag: str) -> Path:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    WORK_ROOT.chmod(0o755)
    path = WORK_ROOT / f"{tag}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    path.chmod(0o755)
    return path


@dataclass
class PgEnv:
    root: Path
    config_path: Path
    pg: PgInstance
    source: str = "main"
    env: dict[str, str] = field(default_factory=dict)
    restored: list[PgInstance] = field(default_factory=list)
    restored_dirs: list[Path] = field(default_factory=list)

    def drkit(self, *args: str, check: bool = True, extra_env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, **(extra_env or {})}
        proc = subprocess.run(
            [DRKIT, "--config", str(self.config_path), *args],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"drkit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def conn(self) -> psycopg.Connection:
        return psycopg.connect(self.pg.dsn, autocommit=True)

    def server_now(self) -> datetime:
        with self.conn() as c:
            return c.execute("SELECT clock_timestamp()").fetchone()[0]

    def switch_and_wait_archived(self, timeout: float = 60) -> str:
        """Close the current WAL segment and wait until the archiver has pushed it."""
        with self.conn() as c:
            c.execute("SELECT txid_current()")  # make sure there is something to switch
            walname = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                row = c.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").fetchone()
                if row[0] and row[0] >= walname:
                    return walname
                time.sleep(0.1)
        raise AssertionError(f"WAL {walname} not archived within {timeout}s; server log:\n{_tail(self.pg.log_path)}")

    def restored_conn(self, target: Path, port: int) -> psycopg.Connection:
        """A connection to a server drkit restored into ``target`` (socket in the target dir)."""
        self.restored_dirs.append(target)
        return psycopg.connect(f"host={target} port={port} user=postgres dbname=postgres", autocommit=True)

    def stop_datadir(self, data_dir: Path) -> None:
        """Stop a server running from ``data_dir`` (a restore, or a relocated config dir)."""
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.pg.bin_dir / "pg_ctl"), "-D", str(data_dir),
                        "-m", "fast", "-w", "stop"], capture_output=True, check=False, timeout=120)

    def close(self) -> None:
        for d in self.restored_dirs:
            if (d / "postmaster.pid").exists():
                self.stop_datadir(d)
        for inst in self.restored:
            try:
                inst.stop()
            except Exception:  # noqa: BLE001
                pass
        self.pg.stop()
        if not os.environ.get("DRKIT_KEEP_TEST_DIRS"):
            shutil.rmtree(self.root, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return ""


def make_pg_env(tag: str, repo_url: str | None = None, s3: dict | None = None,
                env: dict[str, str] | None = None, archive_timeout: int = 0,
                encryption: dict | None = None, server_only_env: dict[str, str] | None = None) -> PgEnv:
    root = workdir(tag)
    key = root / "master.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o640)
    repo_dir = root / "repo"
    if repo_url is None:
        repo_dir.mkdir()
        shutil.chown(repo_dir, "postgres", "postgres")
        repo_url = f"file://{repo_dir}"
    # A PG instance needs its port before the config names it: start first, then configure.
    cfg_path = root / "drkit.yaml"
    archive_cmd = f"{DRKIT} --config {cfg_path} pg wal-push --source main %p"
    pg = start_postgres(root / "pg", archive_command=archive_cmd, archive_timeout=archive_timeout or None,
                        env={**(env or {}), **(server_only_env or {})})
    try:  # a failed setup must not leave the server behind
        config = {
            "repository": {"url": repo_url, **({"s3": s3} if s3 else {})},
            "encryption": encryption or {"key_file": str(key)},
            "sources": {"main": {"type": "postgres", "dsn": pg.dsn}},
        }
        cfg_path.write_text(yaml.safe_dump(config))
        cfg_path.chmod(0o644)
        shutil.chown(key, "root", "postgres")
        penv = PgEnv(root, cfg_path, pg, env=dict(env or {}))
        penv.drkit("init")
    except BaseException:
        pg.stop()
        raise
    return penv
