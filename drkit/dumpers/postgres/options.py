"""Settings of a ``type: postgres`` source."""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drkit.config import read_password
from drkit.errors import ConfigError


@dataclass(frozen=True)
class PgOptions:
    dsn: str
    bin_dir: Path
    password_env: str | None = None
    password_file: Path | None = None
    os_user: str = "postgres"  # who runs a restored server (PostgreSQL refuses root)
    databases: tuple[str, ...] = ()  # logical backups: empty = every connectable database
    checkpoint: str = "fast"
    max_rate: str | None = None
    # Node-local full backups: the server's data directory, readable by drkit on this host.
    data_dir: Path | None = None

    def env(self) -> dict[str, str]:
        """Environment for libpq tools: the password travels here, never in argv."""
        env = dict(os.environ)
        env["TZ"] = "UTC"
        env["PGTZ"] = "UTC"
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        password = self.password()
        if password:
            env["PGPASSWORD"] = password
        return env

    def password(self) -> str | None:
        return read_password(self.password_env, self.password_file)

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise ConfigError(f"PostgreSQL tool {name} not found in {self.bin_dir} (set bin_dir)")
        return str(path)


def check_no_password(dsn: str, what: str) -> None:
    """Refuse a connection string (key=value or URI form) that carries a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - never echo the DSN: it may hold a secret
        raise ConfigError(f"{what} is not a valid libpq connection string") from None
    if params.get("password"):
        raise ConfigError(
            f"{what} must not contain a password: use password_env or password_file (a password "
            "in the DSN would appear in process arguments and error messages)"
        )


def safe_dsn(dsn: str) -> str:
    """The DSN with any password removed, for messages."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001
        return "(unparseable DSN)"
    params.pop("password", None)
    return make_conninfo(**params)


def find_bin_dir() -> Path | None:
    env = os.environ.get("DRKIT_PG_BIN")
    if env:
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("pg_basebackup")
    return Path(found).resolve().parent if found else None


def parse_options(source: str, raw: dict[str, Any]) -> PgOptions:
    where = f"sources.{source}"
    dsn = raw.pop("dsn", None)
    if not dsn or not isinstance(dsn, str):
        raise ConfigError(f"{where}.dsn is required (a libpq connection string)")
    check_no_password(dsn, f"{where}.dsn")
    bin_dir = raw.pop("bin_dir", None)
    bin_path = Path(bin_dir) if bin_dir else find_bin_dir()
    if bin_path is None:
        raise ConfigError(f"{where}.bin_dir: no PostgreSQL client tools found; install postgresql or set bin_dir")
    dbs = raw.pop("databases", None) or ()
    opts = {
        "password_env": raw.pop("password_env", None),
        "password_file": Path(raw.pop("password_file")) if raw.get("password_file") else None,
        "os_user": raw.pop("os_user", "postgres"),
        "checkpoint": raw.pop("checkpoint", "fast"),
        "max_rate": raw.pop("max_rate", None),
        "data_dir": Path(raw.pop("data_dir")) if raw.get("data_dir") else None,
    }
    raw.pop("data_dir", None)
    raw.pop("password_file", None)
    if raw:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(raw))}")
    if opts["checkpoint"] not in ("fast", "spread"):
        raise ConfigError(f"{where}.checkpoint must be fast or spread")
    if opts["data_dir"] is not None and not opts["data_dir"].is_absolute():
        raise ConfigError(f"{where}.data_dir must be an absolute path")
    return PgOptions(dsn=dsn, bin_dir=bin_path, databases=tuple(dbs), **opts)
