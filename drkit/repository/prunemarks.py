"""Prune marks and un-marks: the objects through which prune and writers agree on deletions.

``prune/marks/<run id>`` (sealed JSON, aad ``"prunemark:" + key``) lists the packs and index
files one prune run found unreferenced, when (storage clock) it marked them, and
``unmark_by``: the latest time a writer may still rescue one of them.  A later run deletes a
marked object only when ``marked + grace`` has passed.

A writer that re-used a chunk of a pack found in the index (dedup) calls :func:`check_reused`
after its index is written and before its commit: for every re-used pack some mark names it
writes ``prune/unmark/<pack id>-<token>`` (sealed JSON, aad ``"pruneunmark:" + key``), which
cancels every mark of that pack older than it.  Past ``unmark_by`` it is too late (a pruner may
be deleting the pack now): the commit is refused.  A re-used pack that is gone refuses it too,
so a manifest never names a missing pack.  See docs/repository-format.md, "Prune and the
locking protocol".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from drkit.errors import IntegrityError, NotFoundError
from drkit.repository.crypto import random_hex
from drkit.repository.format import pack_key
from drkit.repository.manifest import iso, parse_iso

if TYPE_CHECKING:
    from drkit.repository.repo import Repository

log = logging.getLogger(__name__)

MARKS_PREFIX = "prune/marks/"
UNMARK_PREFIX = "prune/unmark/"


@dataclass
class Mark:
    key: str
    marked: datetime
    unmark_by: datetime
    packs: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Unmark:
    key: str
    pack: str
    written: datetime


def mark_key(run_id: str) -> str:
    return f"{MARKS_PREFIX}{run_id}"


def write_mark(repo: Repository, run_id: str, marked: datetime, unmark_by: datetime,
               packs: Iterable[str], indexes: Iterable[str]) -> str:
    key = mark_key(run_id)
    doc = {"version": 1, "run": run_id, "marked": iso(marked), "unmark_by": iso(unmark_by),
           "packs": sorted(packs), "indexes": sorted(indexes)}
    repo.storage.put(key, repo._seal_json("prunemark", key, json.dumps(doc).encode()))
    return key


def load_mark(repo: Repository, key: str) -> Mark | None:
    """The mark at ``key`` (``None`` if it is gone); :class:`IntegrityError` if it is damaged."""
    try:
        sealed = repo.storage.get(key)
    except NotFoundError:
        return None
    try:
        doc = json.loads(repo._open_json("prunemark", key, sealed))
        return Mark(key, parse_iso(doc["marked"]), parse_iso(doc["unmark_by"]),
                    [str(p) for p in doc["packs"]], [str(i) for i in doc["indexes"]])
    except IntegrityError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"{key}: not a prune mark ({exc})", key=key) from None


def read_marks(repo: Repository, damaged: list[str] | None = None) -> list[Mark]:
    """Every readable mark, oldest first.  A damaged one is left out (with a warning; its key is
    appended to ``damaged``): a mark only ever permits deletion, so ignoring one is safe."""
    marks = []
    for info in repo.storage.list(MARKS_PREFIX):
        try:
            mark = load_mark(repo, info.key)
        except IntegrityError as exc:
            log.warning("prune mark %s is damaged (%s); ignoring it: nothing it names will be deleted on "
                        "its account", info.key, exc)
            if damaged is not None:
                damaged.append(info.key)
            continue
        if mark is not None:
            marks.append(mark)
    return sorted(marks, key=lambda m: m.marked)


def write_unmark(repo: Repository, pack_id: str, when: datetime) -> str:
    key = f"{UNMARK_PREFIX}{pack_id}-{random_hex(8)}"
    doc = {"version": 1, "pack": pack_id, "written": iso(when)}
    repo.storage.put(key, repo._seal_json("pruneunmark", key, json.dumps(doc).encode()))
    return key


def read_unmarks(repo: Repository) -> list[Unmark]:
    """Every un-mark.  One that is damaged still counts (for its pack, from its key, as written
    now): keeping a pack too long is harmless, deleting one a writer rescued is not."""
    out = []
    for info in repo.storage.list(UNMARK_PREFIX):
        pack = info.key[len(UNMARK_PREFIX):].rsplit("-", 1)[0]
        try:
            doc = json.loads(repo._open_json("pruneunmark", info.key, repo.storage.get(info.key)))
            out.append(Unmark(info.key, str(doc["pack"]), parse_iso(doc["written"])))
        except NotFoundError:
            continue
        except (IntegrityError, ValueError, TypeError, KeyError) as exc:
            log.warning("prune un-mark %s is damaged (%s); it still keeps pack %s", info.key, exc, pack)
            out.append(Unmark(info.key, pack, repo.server_time()))
    return out


def check_reused(repo: Repository, packs: Iterable[str]) -> list[str]:
    """Before a commit: rescue every re-used pack a prune run marked; refuse a commit that would
    reference a pack that is gone or past rescue.  Returns the un-mark keys written."""
    packs = set(packs)
    if not packs:
        return []
    marks = [m for m in read_marks(repo) if packs.intersection(m.packs)]
    written: list[str] = []
    if marks:
        now = repo.server_time()
        for pack in sorted(packs):
            mine = [m for m in marks if pack in m.packs]
            if not mine:
                continue
            late = [m for m in mine if now >= m.unmark_by]
            if late:
                raise IntegrityError(
                    f"this backup re-uses pack {pack}, which prune run {late[0].key} marked unreferenced at "
                    f"{iso(late[0].marked)} and may be deleting now (rescue was possible until "
                    f"{iso(late[0].unmark_by)}); nothing was committed: run the backup again", key=pack_key(pack))
            written.append(write_unmark(repo, pack, now))
    for pack in sorted(packs):
        if not repo.storage.exists(pack_key(pack)):
            raise IntegrityError(
                f"this backup re-uses chunks of pack {pack_key(pack)}, which is gone (removed by prune since the "
                "backup loaded the index); nothing was committed: run the backup again", key=pack_key(pack))
    return written
