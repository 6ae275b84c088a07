"""A drill's data checks on a restored PostgreSQL server: one SQL statement, its rows as text.

The query runs through ``psql`` on the restored server's Unix socket as its OS user
(``os_user``), the way the drill's built-in check asks it: no password is needed or passed.  A
row's text is its columns joined by ``|`` (psql's unaligned format), NULL as the empty string.
The statement runs in a read-only transaction (``default_transaction_read_only``): a check
cannot change what it checks.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any

from drkit.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from drkit.dumpers import RestoreResult

    from .options import PgOptions

TIMEOUT = 60.0


def query_problem(query: Any) -> str | None:
    if not isinstance(query, str) or not query.strip():
        return "a PostgreSQL data check's query is one SQL statement, as a string"
    return None


def default_database(opts: PgOptions) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return str(conninfo_to_dict(opts.dsn).get("dbname") or "postgres")
    except Exception:  # noqa: BLE001 - never echo the DSN
        return "postgres"


def run_query(opts: PgOptions, result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
    from .restore import _as_user

    problem = query_problem(query)
    if problem:
        raise ConfigError(problem)
    d = result.details
    if not d.get("port") or not d.get("socket_dir"):
        raise ConfigError("the restore left no server to query")
    db = database or default_database(opts)
    cmd = [opts.tool("psql"), "-X", "-q", "-h", str(d["socket_dir"]), "-p", str(d["port"]), "-d", db,
           "-A", "-t", "-F", "|", "-0", "-v", "ON_ERROR_STOP=1", "-c", query]
    try:
        proc = subprocess.run(_as_user(cmd, opts.os_user), capture_output=True, timeout=TIMEOUT, check=False,
                              env={**os.environ, "PGOPTIONS": "-c default_transaction_read_only=on"})
    except subprocess.TimeoutExpired:
        raise SourceError(f"the query did not answer within {TIMEOUT:.0f} s (database {db})") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise SourceError(f"the restored server refused the query (database {db}): {err[-300:]}")
    out = proc.stdout.decode(errors="replace")
    rows = out.split("\0")
    if rows and rows[-1] in ("", "\n"):
        rows.pop()
    return rows


def restored_env(opts: PgOptions, result: RestoreResult) -> dict[str, str]:
    """libpq's variables and ``DRKIT_RESTORED_URL`` (a URI with the socket directory as host)."""
    from urllib.parse import quote

    d = result.details
    if not d.get("port") or not d.get("socket_dir"):
        return {}
    db, user, host, port = default_database(opts), opts.os_user, str(d["socket_dir"]), str(d["port"])
    return {"DRKIT_RESTORED_URL": f"postgresql://{quote(user)}@/{quote(db)}?host={quote(host)}&port={port}",
            "DRKIT_RESTORED_HOST": host, "DRKIT_RESTORED_PORT": port,
            "PGHOST": host, "PGPORT": port, "PGDATABASE": db, "PGUSER": user}
