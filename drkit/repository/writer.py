"""The write pipeline: stream -> chunks -> (hash, compress, encrypt, self-check) -> packs.

Memory is bounded: at most ``2 * workers + 2`` chunks are in flight through the worker pool and
at most ``upload_concurrency`` finished packs wait for upload while one more is being filled, so
peak memory is about ``pack_size * (upload_concurrency + 1) + 2 * chunk_max * (2 * workers + 2)``
whatever the size of the stream.

Write ordering (docs/repository-format.md): packs are uploaded first; :meth:`WriteSession.finish`
writes the index file for them only after every pack upload succeeded; the caller commits the
manifest only after ``finish`` returned.  A crash at any point leaves only unreferenced objects.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING

from pyfastcdc.cy import FastCDC

from drkit.errors import DrkitError
from drkit.repository import crashpoints
from drkit.repository.blobs import Prepared, prepare
from drkit.repository.crypto import random_hex
from drkit.repository.format import INDEX_PREFIX, LOG_INDEX_PREFIX, object_aad, pack_key
from drkit.repository.index import Location, encode_index
from drkit.repository.manifest import StreamRef

if TYPE_CHECKING:
    from drkit.repository.repo import Repository

log = logging.getLogger(__name__)

PACK_MAGIC = b"DRKP"

#: Called with the byte count of each chunk a session takes in (bytes read from the source), for
#: a progress display (drkit/progress.py). Read when a session is created, so the writer's worker
#: threads report to the caller's display; the callback must be thread-safe.
PROGRESS: ContextVar[Callable[[int], None] | None] = ContextVar("drkit_write_progress", default=None)


class WriteSession:
    """Collects the chunks of one backup (or log push) into packs, then writes their index."""

    def __init__(self, repo: Repository, *, dedup: bool = True) -> None:
        self.repo = repo
        self.keys = repo.keys
        self.level = repo.compression_level
        self.pack_size = repo.pack_size
        self.workers = repo.workers
        self.known = repo.load_index(include_logs=False) if dedup else None
        self._new: dict[str, Location] = {}
        self._pack_entries: dict[str, list[tuple[str, int, int, int]]] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="drkit-chunk")
        self._uploads: ThreadPoolExecutor = ThreadPoolExecutor(
            repo.upload_concurrency, thread_name_prefix="drkit-upload"
        )
        self._upload_slots = threading.BoundedSemaphore(repo.upload_concurrency)
        self._pending: list[Future[None]] = []
        self._buf = bytearray(PACK_MAGIC)
        self._entries: list[tuple[str, int, int, int]] = []
        self._pack_id = random_hex()
        self.stored_bytes = 0
        self._stat_lock = threading.Lock()
        self.chunks_new = 0
        self.chunks_reused = 0
        #: Packs of the loaded index this session re-used (dedup): checked against prune's marks
        #: before the commit (:func:`drkit.repository.prunemarks.check_reused`).
        self.reused_packs: set[str] = set()
        #: Packs a prune run has marked unreferenced: not deduplicated against (their chunks are
        #: stored again), so only packs marked during this backup ever need rescuing.
        self.avoid_packs: set[str] = set()
        if self.known is not None:
            from drkit.repository.prunemarks import read_marks

            self.avoid_packs = {p for m in read_marks(repo) for p in m.packs}
        self._closed = False
        self._observe = PROGRESS.get()
        cdc = repo.chunker
        #: The repository's keyed content-defined chunker (its cut points depend on the key).
        self.cdc = FastCDC(cdc["avg"], min_size=cdc["min"], max_size=cdc["max"], seed=self.keys.chunker_seed)

    # -- chunks -----------------------------------------------------------------------------
    def _seen(self, blob_id: str) -> Location | None:
        loc = self._new.get(blob_id)
        if loc is None and self.known is not None:
            loc = self.known.get(blob_id)
            if loc is not None and loc.pack in self.avoid_packs:
                return None
        return loc

    def _add(self, prep: Prepared) -> list[object]:
        loc = self._seen(prep.id)
        if loc is not None:
            self.chunks_reused += 1
            if prep.id not in self._new:
                self.reused_packs.add(loc.pack)
            return loc.as_list(prep.id)
        if prep.sealed is None:  # raced: known at prepare time but not now (cannot happen)
            raise DrkitError(f"internal error: chunk {prep.id} vanished from the index")
        offset = len(self._buf)
        self._buf += prep.sealed
        self._entries.append((prep.id, offset, len(prep.sealed), prep.raw_length))
        loc = Location(self._pack_id, offset, len(prep.sealed), prep.raw_length)
        self._new[prep.id] = loc
        self.chunks_new += 1
        if len(self._buf) >= self.pack_size:
            self._flush_pack()
        return loc.as_list(prep.id)

    def write_stream(
        self, name: str, reader: IO[bytes], meta: dict | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> StreamRef:
        """Chunk (FastCDC) and store everything ``reader`` yields until EOF; return its reference."""
        return self.write_chunks(name, (bytes(c.data) for c in self.cdc.cut_stream(reader)), meta, progress)

    def write_chunks(
        self, name: str, chunks: Iterable[bytes | bytearray], meta: dict | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> StreamRef:
        """Store a stream that the caller has already cut into chunks (in order).

        Where a stream is cut is the writer's choice (readers only concatenate the chunks), but
        dedup needs the same bytes to be cut the same way every time: callers cut with
        :attr:`cdc` or at positions that depend only on the content (e.g. file offsets).  Each
        chunk must be at most ``cdc.max_size`` bytes (the memory bound) and must not be modified
        after it is handed over (worker threads read it).
        """
        refs: list[list[object]] = []
        window: deque[Future[Prepared]] = deque()
        max_inflight = 2 * self.workers + 2
        size = 0
        known = _MergedView(self._new, self.known, self.avoid_packs)
        limit = self.cdc.max_size
        for data in chunks:
            n = len(data)
            if not n:
                continue
            if n > limit:
                raise DrkitError(f"internal error: a {n}-byte chunk is larger than the {limit}-byte maximum")
            size += n
            if self._observe is not None:
                self._observe(n)
            window.append(self._pool.submit(prepare, self.keys, data, self.level, known))
            if len(window) >= max_inflight:
                refs.append(self._add(window.popleft().result()))
                if progress:
                    progress(size)
            crashpoints.hit("write_stream.chunk")
        while window:
            refs.append(self._add(window.popleft().result()))
        digest = self.keys.stream_digest([str(c[0]) for c in refs], size)
        return StreamRef(name=name, size=size, digest=digest, chunks=refs, meta=meta or {})

    # -- packs ------------------------------------------------------------------------------
    def _flush_pack(self) -> None:
        if not self._entries:
            return
        pack_id, entries, body = self._pack_id, self._entries, self._buf
        header = json.dumps({"pack": pack_id, "blobs": entries}, separators=(",", ":")).encode()
        sealed_header = self.keys.seal(header, object_aad("packheader", pack_id))
        body += sealed_header + len(sealed_header).to_bytes(4, "little")
        self._pack_entries[pack_id] = entries
        self._buf, self._entries, self._pack_id = bytearray(PACK_MAGIC), [], random_hex()
        self._upload_slots.acquire()
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        self._raise_failed()
        # The bytearray itself: nothing writes to it any more (self._buf is a new one), and
        # storage backends take any bytes-like object; saves a pack-sized copy.
        self._pending.append(self._uploads.submit(self._upload, pack_id, body))

    def _upload(self, pack_id: str, data: bytes | bytearray) -> None:
        try:
            crashpoints.hit("pack.before_upload")
            self.repo.storage.put(pack_key(pack_id), data)
            with self._stat_lock:
                self.stored_bytes += len(data)
            crashpoints.hit("pack.after_upload")
        finally:
            self._upload_slots.release()

    def _raise_failed(self) -> None:
        for fut in self._pending:
            if fut.done() and fut.exception():
                raise fut.exception()  # type: ignore[misc]

    def finish(self) -> int:
        """Upload the last pack, wait for all uploads, write the index.  Returns bytes stored.

        Then, if the session re-used packs of the index, rescue any a prune run marked and refuse
        (IntegrityError) if one is gone or past rescue: the caller must not commit then."""
        try:
            self._flush_pack()
            for fut in self._pending:
                fut.result()
            crashpoints.hit("session.before_index")
            if self._pack_entries:
                doc = encode_index(self._pack_entries)
                name = f"{INDEX_PREFIX if self.known is not None else LOG_INDEX_PREFIX}{random_hex()}"
                sealed = self.keys.seal(self.repo.compress_meta(doc), object_aad("index", name))
                self.repo.storage.put(name, sealed)
                self.stored_bytes += len(sealed)
            crashpoints.hit("session.after_index")
            if self.reused_packs:  # prune may have marked (or removed) a pack this backup re-uses
                from drkit.repository.prunemarks import check_reused

                check_reused(self.repo, self.reused_packs)
            if self.known is not None:
                for blob_id, loc in self._new.items():
                    self.known.add(blob_id, loc)
            return self.stored_bytes
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._uploads.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WriteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MergedView:
    """``in`` over this session's new chunks and the repository index (read-only, lock-free)."""

    def __init__(self, new: dict[str, Location], known: object | None, avoid: set[str] | None = None) -> None:
        self.new = new
        self.known = known
        self.avoid = avoid or set()

    def __contains__(self, blob_id: str) -> bool:
        if blob_id in self.new:
            return True
        if self.known is None or blob_id not in self.known:  # type: ignore[operator]
            return False
        return not self.avoid or self.known.get(blob_id).pack not in self.avoid  # type: ignore[attr-defined]


def cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
