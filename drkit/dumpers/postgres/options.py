"""Settings of a ``type: postgres`` source."""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict, with_config

from drkit.config import FilePath, Text, read_password, validate_section
from drkit.errors import ConfigError


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError("not absolute")
    return path


def _rate_input(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# pg_basebackup --max-rate: 32 .. 1048576 kB/s, "k" (default) or "M" suffix.
MaxRate = Annotated[str, BeforeValidator(_rate_input), Strict(),
                    Field(pattern=r"^[1-9][0-9]*[kM]?$", description="a rate such as 100M or 32768k (pg_basebackup --max-rate)")]
AbsolutePath = Annotated[FilePath, AfterValidator(_absolute), Field(description="an absolute path")]
Databases = Annotated[tuple[Annotated[str, Strict(), Field(min_length=1)], ...], Strict(False),
                      Field(description="a list of database names")]
Checkpoint = Annotated[Literal["fast", "spread"], Field(description="fast or spread")]
BackupFrom = Annotated[Literal["primary", "standby", "prefer-standby"],
                       Field(description="primary, standby or prefer-standby")]
Dsns = Annotated[tuple[Annotated[str, Strict(), Field(min_length=1)], ...], Strict(False),
                 Field(description="a list of libpq connection strings")]


def _seconds(value: Any) -> Any:
    """60, 60.5, "60s", "2m" -> seconds (a float); anything else is left for the validator."""
    if isinstance(value, str):
        text = value.strip()
        for suffix, mult in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
            if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
                return float(text[: -len(suffix)]) * mult
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0, description="seconds, or a time such as 60s or 2m")]


@with_config({"extra": "forbid"})
@dataclass(frozen=True)
class PgOptions:
    dsn: str
    bin_dir: FilePath
    password_env: Text | None = None
    password_file: FilePath | None = None
    os_user: Text = "postgres"  # who runs a restored server (PostgreSQL refuses root)
    databases: Databases = ()  # logical backups: empty = every connectable database
    checkpoint: Checkpoint = "fast"
    max_rate: MaxRate | None = None
    # Node-local full backups: the server's data directory, readable by drkit on this host (with
    # backup_from standby/prefer-standby: the standby's).
    data_dir: AbsolutePath | None = None
    # Full backups from a streaming standby: its DSN (or several, tried in order), which node a
    # full backup reads, and how far behind the primary a standby may be (see standby.py).
    standby_dsn: Text | None = None
    standbys: Dsns = ()
    backup_from: BackupFrom = "primary"
    max_standby_lag: Seconds = 60.0
    # The WAL receiver ('drkit pg receive'): run by 'schedule run' for continuous policies when
    # set; the seal interval is then the RPO while it runs.
    receive: bool = False
    receive_seal_seconds: Seconds = 5.0
    receive_dir: AbsolutePath | None = None
    receive_synchronous: bool = False
    # The source's name, for messages (not a setting of the file).
    source: InitVar[str | None] = None

    def __post_init__(self, source: str | None) -> None:
        object.__setattr__(self, "_source", source)

    def env(self) -> dict[str, str]:
        """Environment for libpq tools: the password travels here, never in argv.

        Tools that only read files (pg_waldump, pg_controldata) run with it too, so a
        ``password_env`` this process lacks is left out here rather than refused; every path
        that logs in connects through :func:`server.connect` (which calls :meth:`password`)
        first and gets the ConfigError there."""
        env = dict(os.environ)
        env["TZ"] = "UTC"
        env["PGTZ"] = "UTC"
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        if self.password_env and not os.environ.get(self.password_env) and not self.password_file:
            return env
        password = self.password()
        if password:
            env["PGPASSWORD"] = password
        return env

    def password(self) -> str | None:
        """The password to log in with (None: none configured, libpq's own mechanisms apply).

        Raises ConfigError when ``password_env`` names a variable that is not set."""
        owner = getattr(self, "_source", None)
        return read_password(self.password_env, self.password_file, owner=f"sources.{owner}" if owner else None)

    def standby_dsns(self) -> tuple[str, ...]:
        return ((self.standby_dsn,) if self.standby_dsn else ()) + tuple(self.standbys)

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


SETTINGS = {"dsn", "bin_dir", "password_env", "password_file", "os_user", "databases", "checkpoint", "max_rate",
            "data_dir", "standby_dsn", "standbys", "backup_from", "max_standby_lag", "receive",
            "receive_seal_seconds", "receive_dir", "receive_synchronous"}


def parse_options(source: str, raw: dict[str, Any]) -> PgOptions:
    """Validate a postgres source's settings; a problem raises ConfigError naming
    ``sources.<source>.<field>``, what it accepts and what was given."""
    where = f"sources.{source}"
    dsn = raw.get("dsn")
    if not dsn or not isinstance(dsn, str):  # checked here: a DSN is never echoed (it may hold a secret)
        raise ConfigError(f"{where}.dsn is required (a libpq connection string)")
    check_no_password(dsn, f"{where}.dsn")
    given = {k: v for k, v in raw.items() if v is not None or k not in ("databases", "bin_dir")}
    if "databases" in raw and raw["databases"] is None:
        given["databases"] = ()
    if given.get("bin_dir") is None:
        found = find_bin_dir()
        if found is None:
            raise ConfigError(f"{where}.bin_dir: no PostgreSQL client tools found; install postgresql or set bin_dir")
        given["bin_dir"] = found
    for i, sdsn in enumerate(([raw["standby_dsn"]] if isinstance(raw.get("standby_dsn"), str) else [])
                             + [d for d in (raw.get("standbys") or []) if isinstance(d, str)]):
        check_no_password(sdsn, f"{where}.standby_dsn" if i == 0 and raw.get("standby_dsn") else f"{where}.standbys")
    opts = validate_section(PgOptions, given, ("sources", source), allowed=SETTINGS, fixed={"source": source})
    assert opts is not None
    if opts.backup_from != "primary" and not opts.standby_dsns():
        raise ConfigError(f"{where}.backup_from is {opts.backup_from}: name the standby in {where}.standby_dsn "
                          "(or standbys)")
    return opts
