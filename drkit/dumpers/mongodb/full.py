"""Full MongoDB backups: every wanted collection as raw BSON, made consistent by its oplog window.

The idea of ``mongodump --oplog``, without mongodump:

1. read the newest oplog entry (the *start* position, before the first document is read);
2. read the catalog (databases, collections with their options, every index, views, users and
   roles when the credentials may read them) and every wanted collection's documents, as the
   raw BSON the server sends, straight into the repository (one stream per collection,
   ``data/<db>/<collection>``; ``parallel`` collections at once, each reader thread writing
   into a part of the backup transaction);
3. read the newest oplog entry again (the *end* position) and store the entries after the start
   up to the end (``oplog.bson``).

The documents were read at different moments, so on their own they are not a state the database
was ever in; a restore replays the stored window over them and the result is the database as of
the end position (``consistent_at``).  The start position must still be in the oplog when the
window is read -- if the oplog rolled over during a long backup, the backup fails (nothing is
committed) and says so.  A server without an oplog (standalone) still gets full backups,
recorded ``consistent: false``: they are consistent only if nothing wrote meanwhile.

With ``read_preference`` other than ``primary`` drkit asks the replica set which member that
preference selects and reads everything -- oplog and documents -- from that one member (a
secondary's oplog describes exactly the writes its data reflects).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from drkit.errors import SourceError
from drkit.repository import Manifest, Repository
from drkit.repository.manifest import iso, utcnow

from . import oplog as ol
from .catalog import CATALOG_STREAM, OPLOG_PRE_STREAM, OPLOG_STREAM, data_stream, read_catalog
from .connect import query_errors, source_client
from .namespaces import Namespaces
from .options import MongoOptions

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass
class _Stats:
    documents: int = 0
    bytes: int = 0
    collections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, docs: int, size: int) -> None:
        with self.lock:
            self.documents += docs
            self.bytes += size
            self.collections += 1


def full_backup(repo: Repository, source: str, opts: MongoOptions) -> Manifest:
    started = utcnow()
    namespaces = Namespaces(opts.include, opts.exclude)
    with query_errors(opts), source_client(opts) as (client, member):
        with_oplog = ol.has_oplog(client)
        ident = ol.identity(client) if with_oplog else None
        start_raw = ol.newest(client) if with_oplog else None
        start = ol.position_of(start_raw) if start_raw is not None else None
        catalog = read_catalog(client, namespaces)
        stats = _Stats()
        with repo.begin_backup(source, "mongodb", "full", started=started) as txn:
            txn.write_chunks(CATALOG_STREAM, [catalog.to_bytes()], meta={"format": "extjson"})
            _copy_collections(txn, client, catalog.collections_to_copy(), opts.parallel, stats, repo)
            meta: dict[str, Any] = {
                "server": member, "oplog": with_oplog, "consistent": with_oplog,
                "documents": stats.documents, "bytes": stats.bytes, "collections": stats.collections,
                "databases": sorted(catalog.databases), "views": len(catalog.views),
                "users": catalog.users_count, "roles": catalog.roles_count, "notes": catalog.notes,
                "include": list(opts.include), "exclude": list(opts.exclude),
            }
            if with_oplog:
                assert ident is not None
                if ol.identity(client).epoch != ident.epoch:
                    raise SourceError(f"the server at {opts.url} restarted or changed during the backup; take it again")
                end_now = ol.server_now_ms(client)
                if start is not None:
                    ol.check_position(client, start, "the position this backup started at")
                # One pass over the oplog after the start: the window, its last entry (the end
                # position) and the transactions it commits that began before the start.
                watch = _Watch(start)
                until = (end_now // 1000, 0xFFFFFFFF)  # every entry of the server's clock up to now
                window = ol.DocsReader(ol.read_after(client, start.ts if start else None, until), on_doc=watch)
                ref = txn.write_stream(OPLOG_STREAM, window, meta={"format": "bson"})
                ref.meta["entries"] = window.count
                end = watch.last or start
                window_after = start.ts if start else None
                if watch.chained:
                    began = ol.chain_start(client, min(watch.chained))
                    if began < start.ts:  # type: ignore[union-attr]
                        # A transaction open at the start: its earlier entries too, so it replays whole.
                        window_after = ol.just_before(began)
                        pre = ol.DocsReader(ol.read_after(client, window_after, start.ts))  # type: ignore[union-attr]
                        pref = txn.write_stream(OPLOG_PRE_STREAM, pre, meta={"format": "bson"})
                        pref.meta["entries"] = pre.count
                meta.update({
                    "identity": ident.as_dict(), "epoch": ident.epoch,
                    "oplog_start": start.as_dict() if start else None,
                    "oplog_end": end.as_dict() if end else None,
                    "window_after": list(window_after) if window_after else None,
                    "window_entries": window.count,
                    # Every write acknowledged before this instant is at or before the end position.
                    "consistent_at_ms": max(end_now, end.wall_ms if end else 0),
                })
            else:
                meta["consistent_at_ms"] = ol.server_now_ms(client)
                meta["notes"] = meta["notes"] + [
                    "the server has no oplog (standalone): this backup is consistent only if nothing wrote "
                    "during it, and no point-in-time restore can start from it"]
            from datetime import UTC, datetime

            meta["consistent_at"] = iso(datetime.fromtimestamp(meta["consistent_at_ms"] / 1000, UTC))
            manifest = txn.commit(metadata=meta, provides=["backup", "range"] if with_oplog else ["backup"])
    log.info("backup %s: %d documents in %d collections, consistent at %s", manifest.id, stats.documents,
             stats.collections, meta["consistent_at"])
    return manifest


class _Watch:
    """Follows the window's entries as they stream: the last one, and the ``prevOpTime`` of
    transaction entries that point at or before the start (their transaction began earlier)."""

    def __init__(self, start: ol.Position | None) -> None:
        self.start = start
        self.last: ol.Position | None = None
        self.chained: list[tuple[int, int]] = []

    def __call__(self, raw: Any) -> None:
        self.last = ol.position_of(raw)
        if self.start is None or "prevOpTime" not in raw:
            return
        prev = raw["prevOpTime"].get("ts")
        if prev is not None and (prev.time, prev.inc) != (0, 0) and (prev.time, prev.inc) <= self.start.ts:
            self.chained.append((int(prev.time), int(prev.inc)))


def _copy_collections(txn: Any, client: Any, collections: list[tuple[str, str]], parallel: int, stats: _Stats,
                      repo: Repository) -> None:
    """Stream each (db, collection) into the backup: sequentially into the backup's own session,
    or from ``parallel`` threads, each writing into its own part."""
    if parallel <= 1 or len(collections) <= 1 or repo.format_version < 2:
        for db, coll in collections:
            _copy_one(txn, client, db, coll, stats)
        return
    work: queue.Queue[tuple[str, str]] = queue.Queue()
    for item in collections:
        work.put(item)
    errors: list[BaseException] = []
    parts = [txn.part(f"reader-{i}") for i in range(min(parallel, len(collections)))]

    def run(part: Any) -> None:
        try:
            while not errors:
                try:
                    db, coll = work.get_nowait()
                except queue.Empty:
                    return
                _copy_one(part, client, db, coll, stats)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller; the other threads stop
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,), name=f"drkit-{p.name}", daemon=True) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for p in parts:
            if p.state == "open":
                p.fail(f"{type(errors[0]).__name__}: {errors[0]}")
        raise errors[0]
    for p in parts:
        p.finish()


def _copy_one(sink: Any, client: Any, db: str, coll: str, stats: _Stats) -> None:
    from pymongo.read_concern import ReadConcern

    collection = client.get_database(db, codec_options=ol.raw_codec(),
                                     read_concern=ReadConcern("majority")).get_collection(coll)
    # Natural order: a collection scan, no index needed, no sort buffered by the server.
    cursor = collection.find({}, batch_size=BATCH, no_cursor_timeout=False).hint([("$natural", 1)])
    reader = ol.DocsReader(_guarded(cursor, f"{db}.{coll}"))
    try:
        ref = sink.write_stream(data_stream(db, coll), reader, meta={"db": db, "collection": coll})
    finally:
        cursor.close()
    ref.meta.update({"documents": reader.count, "bson_bytes": reader.size})
    stats.add(reader.count, reader.size)


def _guarded(cursor: Any, what: str) -> Any:
    import pymongo.errors

    try:
        yield from cursor
    except pymongo.errors.PyMongoError as exc:
        raise SourceError(f"reading {what} failed: {type(exc).__name__}: {exc}") from None
