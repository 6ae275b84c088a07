"""Repository format constants and object layout (see docs/repository-format.md)."""

from __future__ import annotations

FORMAT_NAME = "drkit-repository"
#: The version ``init`` writes and the newest this code reads and writes (docs/repository-format.md).
FORMAT_VERSION = 2
#: Every version this code opens.  A writer keeps to the repository's version: on a version-1
#: repository it writes version-1 manifests, until ``drkit repository upgrade``.
SUPPORTED_VERSIONS = (1, 2)
#: Log records did not change in version 2; they keep ``format_version: 1``.
LOG_RECORD_VERSION = 1

CONFIG_KEY = "config"
KEYS_PREFIX = "keys/"
DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
LOG_INDEX_PREFIX = "index/log/"  # index files written by log pushes (not loaded for dedup)
MANIFEST_PREFIX = "manifests/"
LOG_PREFIX = "logs/"
LOGCAT_PREFIX = "logcat/"  # sealed log catalog objects: many log records of one source and span
PART_PREFIX = "parts/"  # version 2: one sealed record per finished or failed part of a backup

CHUNK_MIN = 256 * 1024
CHUNK_AVG = 1024 * 1024
CHUNK_MAX = 8 * 1024 * 1024

BLOB_RAW = 0
BLOB_ZSTD = 1


def pack_key(pack_id: str) -> str:
    return f"{DATA_PREFIX}{pack_id[:2]}/{pack_id}"


def manifest_key(source: str, backup_id: str) -> str:
    return f"{MANIFEST_PREFIX}{source}/{backup_id}"


def part_key(source: str, backup_id: str, part: str) -> str:
    return f"{PART_PREFIX}{source}/{backup_id}/{part}"


def log_key(source: str, name: str) -> str:
    return f"{LOG_PREFIX}{source}/{name}"


def blob_aad(blob_id: bytes) -> bytes:
    return b"blob:" + blob_id


def object_aad(kind: str, key: str) -> bytes:
    return f"{kind}:{key}".encode()


def logcat_prefix(source: str) -> str:
    return f"{LOGCAT_PREFIX}{source}/"
