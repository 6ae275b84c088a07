"""Restore a MongoDB full backup (plus oplog slices up to a point in time) into a running server.

Order, so the target is checked before anything is written and indexes are built over a
consistent state:

1. read the backup's catalog; map every wanted namespace to its target name (``--namespace``,
   ``--ns-from``/``--ns-to``); refuse when a target collection holds documents, unless ``--drop``
   (then those collections are dropped first);
2. create the collections with their options (capped, validator, collation, time-series,
   clustered ...);
3. insert the stored documents as the raw BSON they were read as (types and field order kept;
   document validation bypassed: they were valid where they came from), ``parallel`` collections
   at once;
4. replay the backup's own oplog window (tolerantly, like ``mongorestore --oplogReplay``): the
   data is now the database as of the backup's ``consistent_at``;
5. build every index;
6. replay the slices' entries after the backup's end position, in oplog order, up to and
   including the last entry at or before the point in time (a transaction whole or not at all);
7. create the views.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from typing import Any

from drkit.errors import DrkitError, IntegrityError, SourceError
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import LogRecord
from drkit.repository.reader import iter_stream, open_stream

from . import oplog as ol
from .catalog import CATALOG_STREAM, OPLOG_PRE_STREAM, OPLOG_STREAM, BackupCatalog, Collection, data_stream
from .namespaces import Namespaces

log = logging.getLogger(__name__)

BATCH_DOCS = 1000
BATCH_BYTES = 8 << 20


class ScopedNamespaces:
    """A restore's namespace options within the backup's own scope (the source's include and
    exclude when it was taken): oplog slices hold every namespace's entries -- a restore into the
    source's own server among them -- and only those the backup covers are replayed."""

    def __init__(self, scope: Namespaces, request: Namespaces) -> None:
        self.scope, self.request = scope, request

    def wanted(self, ns: str) -> bool:
        return self.scope.wanted(ns) and self.request.wanted(ns)

    def wants_db(self, db: str) -> bool:
        return self.scope.wants_db(db) and self.request.wants_db(db)

    def wants_whole_db(self, db: str) -> bool:
        return self.scope.wants_whole_db(db) and self.request.wants_whole_db(db)

    @property
    def renames(self) -> bool:
        return self.request.renames

    def target(self, ns: str) -> str:
        return self.request.target(ns)

    def whole_db_target(self, db: str) -> str | None:
        return self.request.whole_db_target(db) if self.wants_whole_db(db) else None

    def target_db(self, db: str) -> str:
        out = self.whole_db_target(db)
        if out is None:
            from drkit.errors import ConfigError

            raise ConfigError(f"the namespace options do not map database {db!r} as a whole")
        return out

    def source(self, target_ns: str) -> str | None:
        return self.request.source(target_ns)


def read_backup_catalog(repo: Repository, manifest: Manifest) -> BackupCatalog:
    with closing(iter_stream(repo, manifest.stream(CATALOG_STREAM))) as chunks:
        data = b"".join(chunks)  # small: names, options and index specs only
    return BackupCatalog.from_bytes(data)


def _split(ns: str) -> tuple[str, str]:
    db, _, coll = ns.partition(".")
    return db, coll


def check_target(client: Any, wanted: list[tuple[Collection, str]], drop: bool, where: str) -> list[str]:
    """Refuse (before anything is written) when a target collection holds documents, unless
    ``drop``; return the target namespaces that exist (dropped by :func:`prepare`)."""
    existing = []
    busy = []
    names_by_db: dict[str, set[str]] = {}
    for _, target in wanted:
        db, coll = _split(target)
        if db not in names_by_db:
            names_by_db[db] = set(client[db].list_collection_names())
        if coll in names_by_db[db]:
            existing.append(target)
            if client[db][coll].find_one({}, {"_id": 1}) is not None:
                busy.append(target)
    if busy and not drop:
        shown = ", ".join(busy[:5]) + (f" and {len(busy) - 5} more" if len(busy) > 5 else "")
        raise DrkitError(f"the restore target {where} already holds documents in {shown}; restore into empty "
                         "collections (or another database with --ns-from/--ns-to), or pass --drop to replace them. "
                         "Nothing was written")
    return existing


def prepare(client: Any, cat: BackupCatalog, wanted: list[tuple[Collection, str]], existing: list[str]) -> None:
    """Drop what ``--drop`` replaces, then create the collections (and time-series) with their options."""
    for target in existing:
        db, coll = _split(target)
        client[db].drop_collection(coll)
    for c, target in wanted:
        if c.type == "view" or c.name.startswith("system.buckets."):
            continue
        db, coll = _split(target)
        opts = {k: v for k, v in c.options.items() if k not in ("uuid",)}
        try:
            client[db].command({"create": coll, **opts})
        except Exception as exc:  # noqa: BLE001 - reported with the namespace
            raise SourceError(f"creating {target} on the restore target failed: {_msg(exc)}") from None


def _msg(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details.get("errmsg") if isinstance(details, dict) else None
    return str(text or exc).split(", full error:")[0][:300]


def load_documents(repo: Repository, manifest: Manifest, client: Any, wanted: list[tuple[Collection, str]],
                   parallel: int) -> dict[str, int]:
    """Insert every wanted collection's stored documents; return the count per target namespace."""
    from bson.raw_bson import RawBSONDocument

    streams = {(s.meta.get("db"), s.meta.get("collection")): s for s in manifest.streams
               if s.name.startswith("data/")}
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def one(item: tuple[Collection, str]) -> None:
        c, target = item
        ref = streams.get((c.db, c.name))
        if ref is None:
            raise IntegrityError(f"backup {manifest.id} has no stream {data_stream(c.db, c.name)} although its "
                                 f"catalog lists {c.ns}; run 'drkit verify'")
        db, coll = _split(target)
        dest = client[db][coll]
        n = 0
        batch: list[Any] = []
        size = 0
        with open_stream(repo, ref) as fh:
            for raw in ol.iter_raw(fh, f"backup {manifest.id} stream {ref.name}"):
                batch.append(RawBSONDocument(raw))
                size += len(raw)
                if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
                    n += _insert(dest, batch, target)
                    batch, size = [], 0
            if batch:
                n += _insert(dest, batch, target)
        with lock:
            counts[target] = n

    items = [(c, t) for c, t in wanted if c.type == "collection"]
    if parallel <= 1:
        for item in items:
            one(item)
    else:
        with ThreadPoolExecutor(parallel, thread_name_prefix="drkit-load") as pool:
            for f in [pool.submit(one, item) for item in items]:
                f.result()
    return counts


def _insert(dest: Any, batch: list[Any], target: str) -> int:
    import pymongo.errors

    try:
        dest.insert_many(batch, ordered=False, bypass_document_validation=True)
    except pymongo.errors.BulkWriteError as exc:
        first = (exc.details.get("writeErrors") or [{}])[0]
        raise SourceError(f"inserting into {target} failed: {first.get('errmsg', exc)}") from None
    except pymongo.errors.PyMongoError as exc:
        raise SourceError(f"inserting into {target} failed: {_msg(exc)}") from None
    return len(batch)


def build_indexes(client: Any, wanted: list[tuple[Collection, str]]) -> int:
    built = 0
    for c, target in wanted:
        # "v" (the index format version) is the server's choice; some servers refuse it as an option.
        specs = [{k: v for k, v in s.items() if k != "v"} for s in c.indexes if s.get("name") != "_id_"]
        if c.type != "collection" or not specs:
            continue
        db, coll = _split(target)
        try:
            client[db].command({"createIndexes": coll, "indexes": specs})
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"building the indexes of {target} failed: {_msg(exc)}") from None
        built += len(specs)
    return built


def create_views(client: Any, wanted: list[tuple[Collection, str]], namespaces: Namespaces) -> int:
    made = 0
    for c, target in wanted:
        if c.type != "view":
            continue
        db, coll = _split(target)
        opts = dict(c.options)
        on = opts.get("viewOn")
        if on:
            opts["viewOn"] = _split(namespaces.target(f"{c.db}.{on}"))[1]
        try:
            client[db].command({"create": coll, **opts})
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"creating view {target} failed: {_msg(exc)}") from None
        made += 1
    return made


def replay(repo: Repository, applier: Any, sources: list[tuple[str, Any]], *, after: tuple[int, int] | None,
           until_ms: int | None) -> dict[str, Any]:
    """Apply the entries of ``sources`` ((what, StreamRef) in order) with ``ts > after``, in oplog
    order, stopping before the first entry whose time is past ``until_ms``."""
    import bson

    from .replay import DECODE_OPTS

    applied = 0
    last_ms: int | None = None
    last_ts: tuple[int, int] | None = after
    stopped = False
    for what, ref in sources:
        with open_stream(repo, ref) as fh:
            for raw in ol.iter_raw(fh, what):
                entry = bson.decode(raw, codec_options=DECODE_OPTS)
                ts = ol.entry_ts(entry)
                if last_ts is not None and ts <= last_ts:
                    if after is not None and ts <= after:
                        continue
                    raise IntegrityError(f"{what}: oplog entry ts {ts[0]}:{ts[1]} is not after the previous "
                                         f"one ({last_ts[0]}:{last_ts[1]})")
                ms = ol.entry_ms(entry)
                if until_ms is not None and ms > until_ms:
                    stopped = True
                    break
                applier.apply(entry)
                applied += 1
                last_ms, last_ts = ms, ts
        if stopped:
            break
    out: dict[str, Any] = {"entries_applied": applied}
    if last_ms is not None:
        out["last_entry_ms"] = last_ms
    return out


def slice_refs(slices: list[LogRecord]) -> list[tuple[str, Any]]:
    return [(f"oplog slice {s.name}", s.stream) for s in slices if int(s.metadata.get("entries", 0)) > 0]


def restore_into(repo: Repository, manifest: Manifest, slices: list[LogRecord], client: Any, where: str, *,
                 namespaces: Namespaces, drop: bool, at: datetime | None, parallel: int) -> dict[str, Any]:
    cat = read_backup_catalog(repo, manifest)
    scope = Namespaces(manifest.metadata.get("include") or (), manifest.metadata.get("exclude") or ())
    namespaces = ScopedNamespaces(scope, namespaces)  # type: ignore[assignment]
    wanted = [(c, namespaces.target(c.ns)) for c in cat.collections if namespaces.wanted(c.ns)]
    if not wanted:
        raise DrkitError(f"backup {manifest.id} holds no collection the namespace options select "
                         f"(it holds {', '.join(sorted(cat.databases)) or 'nothing'})")
    existing = check_target(client, wanted, drop, where)
    before = {db: set(client[db].list_collection_names()) for db in {_split(t)[0] for _, t in wanted}}
    try:
        return _restore(repo, manifest, slices, client, cat, wanted, existing, namespaces, at, parallel)
    except BaseException:
        _undo(client, wanted, before)
        raise


def _undo(client: Any, wanted: list[tuple[Collection, str]], before: dict[str, set[str]]) -> None:
    """After a failed restore: drop what it wrote -- the wanted targets (empty, absent or replaced
    with --drop before it) and collections the replay created -- so no half-restored data stays."""
    for db in {_split(t)[0] for _, t in wanted}:
        try:
            now = set(client[db].list_collection_names())
            for name in sorted(now - before.get(db, set()) | {_split(t)[1] for c, t in wanted if _split(t)[0] == db}):
                if name in now and not name.startswith("system."):
                    client[db].drop_collection(name)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("could not remove the partial restore from %s: %s", db, _msg(exc))


def _restore(repo: Repository, manifest: Manifest, slices: list[LogRecord], client: Any, cat: BackupCatalog,
             wanted: list[tuple[Collection, str]], existing: list[str], namespaces: Any, at: datetime | None,
             parallel: int) -> dict[str, Any]:
    prepare(client, cat, wanted, existing)
    counts = load_documents(repo, manifest, client, wanted, parallel)
    details: dict[str, Any] = {"documents": sum(counts.values()), "collections": len(counts)}
    from .replay import OplogApplier

    # One applier for the window and the slices: a transaction begun before the backup's end and
    # committed after it is held across them.
    applier = OplogApplier(client, namespaces, tolerant=True)  # type: ignore[arg-type]
    start = manifest.metadata.get("oplog_start")
    after = manifest.metadata.get("window_after") or (start["ts"] if start else None)
    if manifest.metadata.get("oplog"):
        names = {s.name for s in manifest.streams}
        sources = [(f"backup {manifest.id} {name}", manifest.stream(name)) for name in (OPLOG_PRE_STREAM, OPLOG_STREAM)
                   if name in names]
        w = replay(repo, applier, sources, after=tuple(after) if after else None, until_ms=None)
        details["window_entries_applied"] = w["entries_applied"]
    details["indexes_built"] = build_indexes(client, wanted)
    if slices:
        end = manifest.metadata.get("oplog_end")
        until = int(at.timestamp() * 1000) if at is not None else None
        applier.tolerant = False  # the data is now exactly the state at the backup's end
        r = replay(repo, applier, slice_refs(slices), after=tuple(end["ts"]) if end else None, until_ms=until)
        details["oplog_entries_applied"] = r["entries_applied"]
    stats = applier.close()
    details["replay"] = stats.as_dict()
    details["views"] = create_views(client, wanted, namespaces)
    if cat.users or cat.roles:
        details["users_and_roles"] = (f"{len(cat.users)} users and {len(cat.roles)} roles are in the backup; "
                                      "they were not restored (restoring credentials is a separate step)")
    if cat.notes:
        details["backup_notes"] = list(cat.notes)
    return details
