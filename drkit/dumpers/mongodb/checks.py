"""A drill's data checks on a restored MongoDB server: a query document, its result as rows.

``query`` is a mapping of one of three forms (values in MongoDB Extended JSON, so
``{"$oid": ...}`` or ``{"$date": ...}`` work in a filter):

* a find: ``{db: app, collection: patients, filter: {status: active}, projection: {_id: 0, name: 1},
  sort: {name: 1}, limit: 10}`` (``filter``, ``projection``, ``sort`` and ``limit`` optional);
* an aggregation: ``{db: app, collection: patients, pipeline: [{$count: n}]}``;
* a database command: ``{db: app, command: {count: patients}}`` (one row: the reply).

``db`` may be left out when the check gives ``database``.  Each row is a document as relaxed
Extended JSON (``{"_id": 1, "name": "x"}``, the keys in the document's order).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from drkit.errors import ConfigError

if TYPE_CHECKING:
    from drkit.dumpers import RestoreResult

FIND = {"db", "collection", "filter", "projection", "sort", "limit"}
AGGREGATE = {"db", "collection", "pipeline"}
COMMAND = {"db", "command"}


def query_problem(query: Any) -> str | None:
    if not isinstance(query, dict):
        return ("a MongoDB data check's query is a mapping: {db, collection, filter} (a find), {db, collection, "
                "pipeline} (an aggregation) or {db, command} (a database command)")
    keys = set(query)
    form = COMMAND if "command" in keys else AGGREGATE if "pipeline" in keys else FIND
    if keys - form:
        return (f"unknown key(s) {', '.join(sorted(map(str, keys - form)))} in a MongoDB "
                f"{'command' if form is COMMAND else 'aggregation' if form is AGGREGATE else 'find'} query "
                f"(allowed: {', '.join(sorted(form))})")
    if form is not COMMAND and not isinstance(query.get("collection"), str):
        return "a MongoDB find or aggregation query names its collection (collection: NAME)"
    if "db" in query and not isinstance(query["db"], str):
        return "db: expected a database name"
    checks = {"filter": dict, "projection": dict, "sort": dict, "pipeline": list, "command": dict}
    for k, t in checks.items():
        if k in query and not isinstance(query[k], t):
            return f"{k}: expected a {'list' if t is list else 'mapping'}"
    if "limit" in query and (not isinstance(query["limit"], int) or isinstance(query["limit"], bool)
                             or query["limit"] < 0):
        return "limit: expected a number of documents (0 or more)"
    return None


def _ext(value: Any) -> Any:
    """YAML values to BSON types: read as Extended JSON ($oid, $date, $numberLong...)."""
    from bson import json_util

    return json_util.loads(json.dumps(value))


def _row(doc: Any) -> str:
    from bson import json_util

    return json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS)


def run_query(make_client: Any, result: RestoreResult, query: Any, database: str | None = None) -> list[str]:
    from .connect import query_errors

    problem = query_problem(query)
    if problem:
        raise ConfigError(problem)
    db_name = query.get("db") or database
    if not db_name:
        raise ConfigError("a MongoDB data check names its database: db in the query, or the check's database")
    url = result.details.get("url") or result.into
    if not url:
        raise ConfigError("the restore left no server to query")
    client = make_client(url, timeout=10, directConnection=True)
    try:
        with query_errors(None, url):
            db = client[db_name]
            if "command" in query:
                reply = db.command(_ext(query["command"]))
                return [_row(reply)]
            coll = db[query["collection"]]
            if "pipeline" in query:
                return [_row(d) for d in coll.aggregate(_ext(query["pipeline"]))]
            cursor = coll.find(_ext(query.get("filter") or {}), _ext(query["projection"]) if "projection" in query
                               else None)
            if query.get("sort"):
                cursor = cursor.sort(list(_ext(query["sort"]).items()))
            if query.get("limit"):
                cursor = cursor.limit(int(query["limit"]))
            return [_row(d) for d in cursor]
    finally:
        client.close()


def restored_env(result: RestoreResult) -> dict[str, str]:
    url = result.details.get("url") or result.into
    if not url:
        return {}
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    env = {"DRKIT_RESTORED_URL": url, "MONGODB_URI": url}
    if parts.hostname:
        env["DRKIT_RESTORED_HOST"] = parts.hostname
    if parts.port:
        env["DRKIT_RESTORED_PORT"] = str(parts.port)
    return env
