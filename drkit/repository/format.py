"""Repository format constants and object layout (see docs/repository-format.md)."""

from __future__ import annotations

FORMAT_NAME = "drkit-repository"
FORMAT_VERSION = 1

CONFIG_KEY = "config"
KEYS_PREFIX = "keys/"
DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
LOG_INDEX_PREFIX = "index/log/"  # index files written by log pushes (not loaded for dedup)
MANIFEST_PREFIX = "manifests/"
LOG_PREFIX = "logs/"

CHUNK_MIN = 256 * 1024
CHUNK_AVG = 1024 * 1024
CHUNK_MAX = 8 * 1024 * 1024

BLOB_RAW = 0
BLOB_ZSTD = 1


def pack_key(pack_id: str) -> str:
    return f"{DATA_PREFIX}{pack_id[:2]}/{pack_id}"


def manifest_key(source: str, backup_id: str) -> str:
    return f"{MANIFEST_PREFIX}{source}/{backup_id}"


def log_key(source: str, name: str) -> str:
    return f"{LOG_PREFIX}{source}/{name}"


def blob_aad(blob_id: bytes) -> bytes:
    return b"blob:" + blob_id


def object_aad(kind: str, key: str) -> bytes:
    return f"{kind}:{key}".encode()
