"""Talking SQL to the source server (psycopg 3); the password never leaves PgOptions.env()."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from drkit.errors import SourceError

from .options import PgOptions, safe_dsn


def connect(opts: PgOptions, dbname: str | None = None) -> psycopg.Connection:
    kwargs: dict[str, Any] = {"connect_timeout": 10, "autocommit": True}
    password = opts.password()
    if password:
        kwargs["password"] = password
    if dbname:
        kwargs["dbname"] = dbname
    try:
        return psycopg.connect(opts.dsn, **kwargs)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to PostgreSQL ({safe_dsn(opts.dsn)}): {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def server_facts(opts: PgOptions) -> dict[str, Any]:
    with connect(opts) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
            " (SELECT system_identifier FROM pg_control_system()),"
            " current_setting('wal_segment_size'), current_setting('archive_mode'),"
            " current_setting('archive_command'), current_setting('wal_level'),"
            " (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default','pg_global')),"
            " pg_is_in_recovery(), current_setting('archive_timeout'),"
            " current_setting('data_directory'), current_setting('config_file'),"
            " current_setting('hba_file'), current_setting('ident_file')"
        ).fetchone()
    assert row is not None
    seg = row[3]
    return {
        "server_version": row[0],
        "server_version_num": row[1],
        "system_identifier": str(row[2]),
        "segment_size": _size(seg),
        "archive_mode": row[4],
        "archive_command": row[5],
        "wal_level": row[6],
        "tablespaces": int(row[7]),
        "in_recovery": bool(row[8]),
        "archive_timeout": row[9],
        "data_directory": row[10],
        "config_files": {"postgresql.conf": row[11], "pg_hba.conf": row[12], "pg_ident.conf": row[13]},
    }


def read_server_files(opts: PgOptions, paths: dict[str, str]) -> tuple[dict[str, bytes], list[str]]:
    """Read small server-side files (configuration kept outside the data directory, as on
    Debian/Ubuntu) with pg_read_binary_file; returns the contents and warnings."""
    out: dict[str, bytes] = {}
    warnings = []
    with connect(opts) as conn:
        for name, path in paths.items():
            try:
                row = conn.execute("SELECT pg_read_binary_file(%s)", (path,)).fetchone()
                out[name] = bytes(row[0]) if row else b""
            except psycopg.Error as exc:
                warnings.append(f"could not read {path} ({_first_line(exc)}); restore it by hand")
    return out, warnings


def server_now(opts: PgOptions) -> datetime:
    with connect(opts) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def databases(opts: PgOptions) -> list[str]:
    with connect(opts) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def _size(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * mult
    return int(text)


