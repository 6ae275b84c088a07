"""A drill's data checks on a restored Redis server: one command, its reply as rows of text.

``query`` is a command line (``"GET config:version"``, split like a shell would, so quote a key
with spaces) or its words as a list (``["HGET", "user:1", "name"]``).  The reply becomes rows:
nil is no row; a string or number one row; an array (or a map, flattened to key, value, ...)
one row per element, a nested array as JSON.  ``database`` is the database number (default 0).
Only read commands make sense; the instance is thrown away after the drill either way.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from drkit.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from drkit.dumpers import RestoreResult


def words(query: Any) -> list[str]:
    if isinstance(query, str):
        try:
            return shlex.split(query)
        except ValueError as exc:
            raise ValueError(f"the command line does not split into words: {exc}") from None
    if isinstance(query, list) and all(isinstance(w, str) for w in query):
        return list(query)
    raise ValueError("a Redis data check's query is a command: a string (e.g. 'GET config:version') or a list "
                     "of its words (e.g. [HGET, user:1, name])")


def query_problem(query: Any) -> str | None:
    try:
        got = words(query)
    except ValueError as exc:
        return str(exc)
    return None if got else "a Redis data check's query names no command"


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list | tuple):
        return json.dumps([_text(x) for x in v])
    return str(v)


def rows_of(reply: Any) -> list[str]:
    if reply is None:
        return []
    if isinstance(reply, dict):
        return [_text(x) for kv in reply.items() for x in kv]
    if isinstance(reply, list | tuple | set):
        return [_text(x) for x in reply]
    if isinstance(reply, bool):
        return ["1" if reply else "0"]
    return [_text(reply)]


def run_query(result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
    import redis

    try:
        argv = words(query)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not argv:
        raise ConfigError("a Redis data check's query names no command")
    port = result.details.get("port")
    if not port:
        raise ConfigError("the restore left no server to query")
    try:
        db = int(database or 0)
    except ValueError:
        raise ConfigError(f"a Redis database is a number, got {database!r}") from None
    try:
        with redis.Redis(host="127.0.0.1", port=int(port), db=db, socket_timeout=30) as c:
            reply = c.execute_command(*argv)
    except redis.ResponseError as exc:
        raise SourceError(f"the restored redis-server refused {argv[0]}: {exc}") from None
    except redis.RedisError as exc:
        raise SourceError(f"the restored redis-server on port {port} does not answer: {exc}") from None
    return rows_of(reply)


def restored_env(result: RestoreResult) -> dict[str, str]:
    port = result.details.get("port")
    if not port:
        return {}
    url = f"redis://127.0.0.1:{port}"
    return {"DRKIT_RESTORED_URL": url, "DRKIT_RESTORED_HOST": "127.0.0.1", "DRKIT_RESTORED_PORT": str(port),
            "REDIS_URL": url}
