"""Drill records: ``drills/<source>/<drill id>``, one sealed JSON object per drill run.

Written once (conditional create), never changed; read by reports and by ``plan restore``'s
throughput estimate.  The id sorts by the drill's start (``YYYYMMDDTHHMMSSZ-<6 hex>``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from drkit.errors import DrkitError, NotFoundError

if TYPE_CHECKING:
    from drkit.repository.repo import Repository

PREFIX = "drills/"


def drill_key(source: str, drill_id: str) -> str:
    return f"{PREFIX}{source}/{drill_id}"


def put_drill(repo: Repository, source: str, drill_id: str, record: dict[str, Any]) -> str:
    key = drill_key(source, drill_id)
    data = json.dumps({**record, "kind": "drill", "source": source, "id": drill_id}, sort_keys=True,
                      default=str).encode()
    repo.storage.put(key, repo._seal_json("drill", key, data))
    return key


def load_drill(repo: Repository, key: str) -> dict[str, Any]:
    doc = json.loads(repo._open_json("drill", key, repo.storage.get(key)))
    if doc.get("kind") != "drill" or drill_key(doc.get("source", ""), doc.get("id", "")) != key:
        raise DrkitError(f"{key}: not the drill record it is stored as")
    return doc


def list_drills(repo: Repository, source: str | None = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every readable drill record (oldest first) and the (key, error) of unreadable ones."""
    prefix = f"{PREFIX}{source}/" if source else PREFIX
    out, bad = [], []
    for info in sorted(repo.storage.list(prefix), key=lambda i: i.key):
        try:
            out.append(load_drill(repo, info.key))
        except NotFoundError:
            continue
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            bad.append((info.key, str(exc)))
    return out, bad
