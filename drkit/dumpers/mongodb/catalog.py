"""What a full backup records besides documents: databases, collections with their options,
indexes, views, users and roles -- and how a restore creates them again.

Stored as the backup's ``catalog.json`` stream in MongoDB Extended JSON (canonical), so that
types inside options survive (a validator's regular expression, a partial index's date).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .namespaces import Namespaces

CATALOG_STREAM = "catalog.json"
OPLOG_STREAM = "oplog.bson"
OPLOG_PRE_STREAM = "oplog-before.bson"  # entries of transactions open at the start, before it
DATA_PREFIX = "data/"
# Index options a server reports that are not options of createIndexes.
_INDEX_DROP = {"ns", "background"}


def data_stream(db: str, coll: str) -> str:
    return f"{DATA_PREFIX}{db}/{coll}"


def _ext() -> Any:
    from bson.json_util import CANONICAL_JSON_OPTIONS

    return CANONICAL_JSON_OPTIONS


@dataclass
class Collection:
    db: str
    name: str
    type: str  # "collection" | "timeseries" | "view"
    options: dict[str, Any] = field(default_factory=dict)
    indexes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.name}"


@dataclass
class BackupCatalog:
    collections: list[Collection] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def databases(self) -> set[str]:
        return {c.db for c in self.collections}

    @property
    def views(self) -> list[Collection]:
        return [c for c in self.collections if c.type == "view"]

    @property
    def users_count(self) -> int:
        return len(self.users)

    @property
    def roles_count(self) -> int:
        return len(self.roles)

    def collections_to_copy(self) -> list[tuple[str, str]]:
        """(db, collection) whose documents are stored: collections and time-series buckets."""
        out = []
        for c in self.collections:
            if c.type == "collection":
                out.append((c.db, c.name))
        return out

    def to_bytes(self) -> bytes:
        from bson import json_util

        doc = {"format": 1, "collections": [c.__dict__ for c in self.collections], "users": self.users,
               "roles": self.roles, "notes": self.notes}
        return json_util.dumps(doc, json_options=_ext()).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BackupCatalog:
        from bson import json_util

        doc = json_util.loads(data.decode(), json_options=_ext())
        return cls([Collection(**c) for c in doc["collections"]], doc.get("users", []), doc.get("roles", []),
                   doc.get("notes", []))


def read_catalog(client: Any, namespaces: Namespaces) -> BackupCatalog:
    """Every wanted database's collections (with options and indexes) and views; users and roles
    when the credentials allow reading them (else a note says why they are not in the backup)."""
    cat = BackupCatalog()
    for db in sorted(client.list_database_names()):
        if not namespaces.wants_db(db):
            continue
        for info in sorted(client[db].list_collections(), key=lambda i: i["name"]):
            name, kind = info["name"], info.get("type", "collection")
            ns = f"{db}.{name}"
            if not namespaces.wanted(ns) and not (kind == "timeseries" and namespaces.wanted(ns)):
                continue
            options = dict(info.get("options") or {})
            entry = Collection(db, name, kind, options)
            if kind == "collection":
                entry.indexes = [_index_spec(s) for s in client[db][name].list_indexes()]
            cat.collections.append(entry)
    _users_and_roles(client, cat, namespaces)
    return cat


def _index_spec(spec: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(spec).items() if k not in _INDEX_DROP}


def _users_and_roles(client: Any, cat: BackupCatalog, namespaces: Namespaces) -> None:
    import pymongo.errors

    try:
        users = client.admin.command({"usersInfo": {"forAllDBs": True}, "showCredentials": True,
                                      "showCustomData": True})
        cat.users = [u for u in users.get("users", []) if namespaces.wants_db(u.get("db", ""))
                     or u.get("db") == "admin"]
    except pymongo.errors.OperationFailure as exc:
        cat.notes.append(f"users not backed up: the server refused usersInfo ({_why(exc)})")
    try:
        roles = []
        for db in sorted(cat.databases | {"admin"}):
            reply = client[db].command({"rolesInfo": 1, "showPrivileges": True, "showBuiltinRoles": False})
            roles += reply.get("roles", [])
        cat.roles = roles
    except pymongo.errors.OperationFailure as exc:
        cat.notes.append(f"roles not backed up: the server refused rolesInfo ({_why(exc)})")


def _why(exc: Any) -> str:
    return str(getattr(exc, "details", {}).get("errmsg") or exc).split(", full error:")[0][:200]


def summary(cat: BackupCatalog) -> dict[str, Any]:
    return json.loads(json.dumps({"collections": len(cat.collections), "views": len(cat.views),
                                  "users": cat.users_count, "roles": cat.roles_count}))
