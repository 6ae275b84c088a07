"""Reading a stream back: chunk refs -> fetched, verified plaintext, with bounded prefetch."""

from __future__ import annotations

import io
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from drkit.errors import IntegrityError, NotFoundError, StorageError
from drkit.repository.blobs import open_chunk
from drkit.repository.format import pack_key
from drkit.repository.manifest import StreamRef

if TYPE_CHECKING:
    from drkit.repository.repo import Repository


def fetch_chunk(repo: Repository, ref: list, *, fallback: bool = True, rehash: bool = True) -> bytes:
    """Fetch one chunk by its reference; fall back to the index if the location hint is stale.

    ``rehash``: see :func:`~drkit.repository.blobs.open_chunk`."""
    blob_id, pack, offset, length, raw = ref
    key = pack_key(pack)
    try:
        sealed = repo.storage.get(key, int(offset), int(length))
        return open_chunk(repo.keys, sealed, blob_id, int(raw), what=key, rehash=rehash)
    except (IntegrityError, NotFoundError, StorageError) as first:
        if not fallback:
            if isinstance(first, IntegrityError):
                raise
            raise IntegrityError(f"chunk {blob_id[:16]} unavailable: {first}", key=key) from None
        loc = repo.load_index().get(blob_id)
        if loc is None or (loc.pack == pack and loc.offset == int(offset)):
            if isinstance(first, IntegrityError):
                raise
            raise IntegrityError(
                f"chunk {blob_id[:16]} unavailable: {first}", key=key
            ) from None
        alt = pack_key(loc.pack)
        sealed = repo.storage.get(alt, loc.offset, loc.length)
        return open_chunk(repo.keys, sealed, blob_id, loc.raw_length, what=alt, rehash=rehash)


def _background() -> None:
    """Run this fetch thread at a lower CPU priority (nice + 5) than the thread that consumes
    the stream.  The consumer (a dumper's rewrite, tar extraction) is serial and sets the pace; with four
    fetch threads at equal priority on a two-core machine the scheduler gave it well under a
    core.  Measured on a 1.8 GB snapshot restore: 5.45-5.58 s (3 runs) against 5.51-8.78 s."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 5))
    except (AttributeError, OSError):  # not Linux (per-thread nice), or not permitted
        pass


def iter_stream(repo: Repository, ref: StreamRef, *, prefetch: int = 8, threads: int = 4) -> Iterator[bytes]:
    """Yield the stream's plaintext chunk by chunk; verify the whole-stream digest at the end."""
    size = 0
    pool = ThreadPoolExecutor(threads, thread_name_prefix="drkit-fetch", initializer=_background)
    try:
        window: deque[Future[bytes]] = deque()
        refs = iter(ref.chunks)
        for chunk_ref in refs:
            window.append(pool.submit(fetch_chunk, repo, chunk_ref, rehash=False))
            if len(window) >= prefetch:
                break
        while window:
            data = window.popleft().result()
            nxt = next(refs, None)
            if nxt is not None:
                window.append(pool.submit(fetch_chunk, repo, nxt, rehash=False))
            size += len(data)
            yield data
    finally:  # also when the consumer stops early (an error, or the generator closed)
        pool.shutdown(wait=True, cancel_futures=True)
    # Every chunk was proven to be its id as it arrived (open_chunk); the digest binds the id list.
    if size != ref.size or repo.keys.stream_digest([c[0] for c in ref.chunks], size) != ref.digest:
        raise IntegrityError(
            f"stream {ref.name}: reassembled {size} bytes do not match the recorded digest/size "
            f"({ref.size} bytes)"
        )


class StreamReader(io.RawIOBase):
    """A read-only file object over :func:`iter_stream` (for tarfile and subprocess stdin)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def open_stream(repo: Repository, ref: StreamRef) -> io.BufferedReader:
    return io.BufferedReader(StreamReader(iter_stream(repo, ref)), buffer_size=1024 * 1024)
