"""Turning chunks into sealed blobs and back, with the in-memory self-check.

``prepare`` runs in worker threads (zstd and AES-GCM release the GIL): it hashes, compresses,
encrypts, and then decrypts, decompresses and re-hashes the result before it may be uploaded, so
a faulty compression or crypto library cannot silently store bytes that will not restore.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import zstandard

from drkit.errors import IntegrityError
from drkit.repository.crypto import Keys
from drkit.repository.format import BLOB_RAW, BLOB_ZSTD, blob_aad

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe: one per thread (and per level).
    comps = getattr(_local, "comps", None)
    if comps is None:
        comps = _local.comps = {}
    comp = comps.get(level)
    if comp is None:
        comp = comps[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "dec", None)
    if dec is None:
        dec = _local.dec = zstandard.ZstdDecompressor()
    return dec


@dataclass(frozen=True)
class Prepared:
    id: str
    raw_length: int
    sealed: bytes | None  # None when the chunk is already stored (dedup)


def seal_chunk(keys: Keys, data: bytes, level: int, blob_id: bytes | None = None) -> tuple[bytes, bytes]:
    blob_id = blob_id if blob_id is not None else keys.chunk_id(data)
    compressed = _compressor(level).compress(data) if level > 0 else b""
    if compressed and len(compressed) < len(data):
        payload = bytes([BLOB_ZSTD]) + compressed
    else:
        payload = bytes([BLOB_RAW]) + data
    return blob_id, keys.seal(payload, blob_aad(blob_id))


def open_chunk(keys: Keys, sealed: bytes, blob_id_hex: str, raw_length: int, *, what: str) -> bytes:
    """Decrypt, decompress and verify one stored chunk; raise IntegrityError naming ``what``."""
    blob_id = bytes.fromhex(blob_id_hex)
    payload = keys.open(sealed, blob_aad(blob_id), what=what)
    flag, body = payload[0], payload[1:]
    if flag == BLOB_ZSTD:
        try:
            data = _decompressor().decompress(body, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: chunk {blob_id_hex[:16]} does not decompress: {exc}", key=what) from None
    elif flag == BLOB_RAW:
        data = body
    else:
        raise IntegrityError(f"{what}: chunk {blob_id_hex[:16]} has unknown encoding {flag}", key=what)
    if len(data) != raw_length or keys.chunk_id(data) != blob_id:
        raise IntegrityError(f"{what}: chunk {blob_id_hex[:16]} content does not match its id", key=what)
    return data


def prepare(keys: Keys, data: bytes, level: int, known: object | None) -> Prepared:
    blob_id = keys.chunk_id(data)
    hex_id = blob_id.hex()
    if known is not None and hex_id in known:  # type: ignore[operator]
        return Prepared(hex_id, len(data), None)
    _, sealed = seal_chunk(keys, data, level, blob_id)
    # Self-check before upload (RELIABILITY: a dependency can corrupt data).
    open_chunk(keys, sealed, hex_id, len(data), what=f"self-check of new chunk {hex_id[:16]}")
    return Prepared(hex_id, len(data), sealed)
