"""Forget records: what retention removed on purpose, so that a hole it leaves in a log chain is
told apart from damage.

``forget`` removes log records a kept restore point does not need.  Between two kept bases that
leaves a hole in the older base's chain, which -- without a record of it -- would read exactly
like a lost WAL segment: ``verify`` would fail and ``list`` would show a GAP.  So before deleting,
``forget`` writes one sealed object ``forgotten/<source>/<time>-<random>`` naming the log records
(and manifests) it is about to remove; the catalog reads every such object of a source, and a
dumper's restore points treat a hole at a forgotten record as the end of that chain (its times
were given up by the policy), not as a gap.  A record that is missing and was never forgotten
is still a gap.

The object is written before the first deletion (its write is the commit of the decision) and is
never rewritten; a run that dies after writing it leaves records named as forgotten that still
exist, which is harmless (an existing record is not a hole) and the next run removes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from drkit.errors import DrkitError, NotFoundError
from drkit.repository.manifest import iso, utcnow
from drkit.repository.repo import Repository

PREFIX = "forgotten/"


def key_for(source: str) -> str:
    return f"{PREFIX}{source}/{utcnow().strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(4).hex()}"


def record(repo: Repository, source: str, logs: Iterable[str], manifests: Iterable[str], why: str) -> str | None:
    """Write the forget record of one run for ``source``; returns its key (None if nothing goes)."""
    doc = {"kind": "forgotten", "source": source, "at": iso(repo.server_time()), "why": why,
           "logs": sorted(logs), "manifests": sorted(manifests)}
    if not doc["logs"] and not doc["manifests"]:
        return None
    key = key_for(source)
    repo.storage.put(key, repo._seal_json("forgotten", key, json.dumps(doc, separators=(",", ":")).encode()))
    return key


def load(repo: Repository, key: str) -> dict:
    """One forget record (raises DrkitError/ValueError if it does not open or parse)."""
    doc = json.loads(repo._open_json("forgotten", key, repo.storage.get(key)))
    if doc.get("kind") != "forgotten" or not isinstance(doc.get("logs"), list):
        raise ValueError(f"{key}: not a forget record")
    return doc


def forgotten_logs(repo: Repository, source: str) -> tuple[frozenset[str], list[tuple[str, str]]]:
    """The log record names retention removed from ``source``, and (key, error) of each forget
    record that does not open (its holes then count as gaps: the safe reading)."""
    names: set[str] = set()
    bad: list[tuple[str, str]] = []
    for info in repo.storage.list(f"{PREFIX}{source}/"):
        try:
            names.update(str(n) for n in load(repo, info.key)["logs"])
        except NotFoundError:
            continue
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            bad.append((info.key, str(exc) or type(exc).__name__))
    return frozenset(names), bad
