"""The repository: init/open, the index, manifests and log records, on top of a Storage."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import IO, Any

import zstandard

from drkit.errors import (
    AlreadyExistsError,
    IntegrityError,
    LogConflict,
    NotFoundError,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    WrongKey,
)
from drkit.repository import crashpoints
from drkit.repository import format as fmt
from drkit.repository.crypto import Keys, random_hex
from drkit.repository.index import Index, decode_index
from drkit.repository.keys import Wrapper, decode_envelope, encode_envelope
from drkit.repository.manifest import LogRecord, Manifest, StreamRef, iso, utcnow
from drkit.repository.memory import tune_malloc
from drkit.repository.writer import WriteSession, cpu_workers
from drkit.storage.base import Storage

log = logging.getLogger(__name__)


class Repository:
    """An opened (unlocked) repository.  Construct with :meth:`init` or :meth:`open`."""

    def __init__(self, storage: Storage, keys: Keys, config: dict[str, Any], key_id: str) -> None:
        tune_malloc()  # before any worker thread exists (see memory.py)
        self.storage = storage
        self.keys = keys
        self.config = config
        self.id: str = config["id"]
        self.key_id = key_id
        self.chunker: dict[str, int] = config["chunker"]
        self.pack_size = 16 * 1024 * 1024
        self.compression_level = 3
        self.workers = cpu_workers()
        self.upload_concurrency = 2
        self._master: bytes | None = None
        self._index: Index | None = None
        self._backup_index: Index | None = None
        self._index_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def init(cls, storage: Storage, wrapper: Wrapper, master: bytes | None = None) -> Repository:
        """Create a repository: a random master key, wrapped by ``wrapper``; then the config."""
        import os

        if storage.stat(fmt.CONFIG_KEY) is not None:
            raise RepositoryExists(f"a repository already exists at {storage.url}")
        master = master or os.urandom(32)
        keys = Keys.from_master(master)
        config = {
            "format": fmt.FORMAT_NAME,
            "version": fmt.FORMAT_VERSION,
            "id": random_hex(16),
            "created": iso(utcnow()),
            "chunker": {"min": fmt.CHUNK_MIN, "avg": fmt.CHUNK_AVG - fmt.CHUNK_MIN, "max": fmt.CHUNK_MAX},
            "compression": "zstd",
        }
        key_id = random_hex(8)
        envelope = wrapper.wrap(master, config["id"], key_id)
        # Key first, config last: the config is the repository's commit marker.
        storage.put(f"{fmt.KEYS_PREFIX}{key_id}", encode_envelope(envelope))
        body = json.dumps(config, sort_keys=True).encode()
        doc = {"config": config, "mac": keys.mac_of(body)}
        try:
            storage.put(fmt.CONFIG_KEY, json.dumps(doc, sort_keys=True, indent=1).encode())
        except AlreadyExistsError:
            storage.delete(f"{fmt.KEYS_PREFIX}{key_id}")
            raise RepositoryExists(f"a repository already exists at {storage.url}") from None
        repo = cls(storage, keys, config, key_id)
        repo._master = master
        return repo

    @classmethod
    def open(cls, storage: Storage, wrapper: Wrapper) -> Repository:
        try:
            raw = storage.get(fmt.CONFIG_KEY)
        except NotFoundError:
            raise RepositoryNotFound(
                f"no drkit repository at {storage.url} (create one with 'drkit init')"
            ) from None
        try:
            doc = json.loads(raw)
            config = doc["config"]
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"{fmt.CONFIG_KEY}: not a drkit repository config", key=fmt.CONFIG_KEY) from None
        if config.get("format") != fmt.FORMAT_NAME:
            raise RepositoryNotFound(f"{storage.url} does not hold a drkit repository")
        if config.get("version") != fmt.FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format version {config.get('version')} is not supported by this drkit "
                f"(supports {fmt.FORMAT_VERSION}); upgrade drkit"
            )
        master, key_id = cls._unwrap_any(storage, wrapper, config["id"])
        keys = Keys.from_master(master)
        body = json.dumps(config, sort_keys=True).encode()
        if not keys.check_mac(body, doc.get("mac", "")):
            raise IntegrityError(f"{fmt.CONFIG_KEY}: MAC mismatch (tampered config)", key=fmt.CONFIG_KEY)
        repo = cls(storage, keys, config, key_id)
        repo._master = master
        return repo

    @staticmethod
    def _unwrap_any(storage: Storage, wrapper: Wrapper, repo_id: str) -> tuple[bytes, str]:
        entries = list(storage.list(fmt.KEYS_PREFIX))
        if not entries:
            raise IntegrityError(f"{storage.url}: repository has no key envelopes (keys/ is empty)", key="keys/")
        errors = []
        for info in sorted(entries, key=lambda i: i.key):
            key_id = info.key[len(fmt.KEYS_PREFIX) :]
            try:
                envelope = decode_envelope(storage.get(info.key))
            except (ValueError, NotFoundError):
                errors.append(f"{info.key}: unreadable")
                continue
            try:
                return wrapper.unwrap(envelope, repo_id, key_id), key_id
            except WrongKey as exc:
                errors.append(str(exc))
        reasons = "; ".join(sorted(set(errors)))
        raise WrongKey(
            f"the configured {wrapper.description} does not unlock the repository at {storage.url} "
            f"(tried {len(entries)} key envelope(s): {reasons}); check the encryption settings"
        )

    def list_keys(self) -> list[dict[str, Any]]:
        out = []
        for info in sorted(self.storage.list(fmt.KEYS_PREFIX), key=lambda i: i.key):
            key_id = info.key[len(fmt.KEYS_PREFIX) :]
            try:
                env = decode_envelope(self.storage.get(info.key))
            except (ValueError, NotFoundError):
                env = {"kind": "unreadable"}
            out.append({
                "id": key_id, "kind": env.get("kind"), "source": env.get("source"),
                "kms_key_id": env.get("kms_key_id"), "in_use": key_id == self.key_id,
            })
        return out

    def rotate_key(self, new_wrapper: Wrapper) -> str:
        """Wrap the master key with ``new_wrapper``, prove it unwraps, then drop the old envelope.

        No data is rewritten.  Returns the new key id.
        """
        if self._master is None:
            raise RepositoryError("repository was opened without its master key")
        key_id = random_hex(8)
        key = f"{fmt.KEYS_PREFIX}{key_id}"
        self.storage.put(key, encode_envelope(new_wrapper.wrap(self._master, self.id, key_id)))
        if new_wrapper.unwrap(decode_envelope(self.storage.get(key)), self.id, key_id) != self._master:
            self.storage.delete(key)
            raise RepositoryError("the new key envelope does not unwrap to the master key; nothing changed")
        old = self.key_id
        self.storage.delete(f"{fmt.KEYS_PREFIX}{old}")
        self.key_id = key_id
        return key_id

    # -- helpers ------------------------------------------------------------------------------
    def compress_meta(self, data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=3).compress(data)

    def decompress_meta(self, data: bytes, what: str) -> bytes:
        try:
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31)
        except zstandard.ZstdError:
            raise IntegrityError(f"{what}: does not decompress", key=what) from None

    def _seal_json(self, kind: str, key: str, data: bytes) -> bytes:
        return self.keys.seal(self.compress_meta(data), fmt.object_aad(kind, key))

    def _open_json(self, kind: str, key: str, sealed: bytes) -> bytes:
        return self.decompress_meta(self.keys.open(sealed, fmt.object_aad(kind, key), what=key), key)

    # -- index --------------------------------------------------------------------------------
    def load_index(self, refresh: bool = False, *, include_logs: bool = True) -> Index:
        """The chunk map.  ``include_logs=False`` skips the index files of log pushes (WAL is
        stored without dedup, so a backup gains nothing from loading them and their number
        grows with every archived segment)."""
        with self._index_lock:
            cached = self._index if include_logs else self._backup_index
            if cached is not None and not refresh:
                return cached
            index = Index()
            keys = [
                i.key for i in self.storage.list(fmt.INDEX_PREFIX)
                if include_logs or not i.key.startswith(fmt.LOG_INDEX_PREFIX)
            ]

            def load(key: str) -> dict:
                return decode_index(self._open_json("index", key, self.storage.get(key)))

            with ThreadPoolExecutor(8) as pool:
                for doc in pool.map(load, keys):
                    index.merge_document(doc)
            if include_logs:
                self._index = index
            else:
                self._backup_index = index
            return index

    # -- writing --------------------------------------------------------------------------------
    def session(self, *, dedup: bool = True) -> WriteSession:
        return WriteSession(self, dedup=dedup)

    def commit_manifest(self, manifest: Manifest) -> str:
        """Write the manifest -- the commit.  It never replaces an existing one."""
        key = fmt.manifest_key(manifest.source, manifest.id)
        self.storage.put(key, self._seal_json("manifest", key, manifest.to_json()))
        return key

    def put_log(
        self, source: str, name: str, reader: IO[bytes], metadata: dict[str, Any] | None = None
    ) -> tuple[str, LogRecord]:
        """Store one log segment.  Returns ("stored" | "identical", record).

        Re-pushing identical content succeeds without storing anything new; different content
        under an existing name raises :class:`LogConflict` (and the existing segment is kept).
        """
        key = fmt.log_key(source, name)
        existing = self.get_log(source, name)
        if existing is not None:
            size, digest = self.digest_stream(reader)
            return self._compare_log(existing, StreamRef(name, size, digest))
        session = self.session(dedup=False)
        try:
            ref = session.write_stream(name, reader)
            session.finish()
        finally:
            session.close()
        record = LogRecord(source=source, name=name, stream=ref, metadata=metadata or {})
        crashpoints.hit("log.before_commit")
        try:
            self.storage.put(key, self._seal_json("log", key, record.to_json()))
            crashpoints.hit("log.after_commit")
        except AlreadyExistsError:
            other = self.get_log(source, name)
            assert other is not None
            return self._compare_log(other, ref)
        return "stored", record

    @staticmethod
    def _compare_log(existing: LogRecord, ref: StreamRef) -> tuple[str, LogRecord]:
        if existing.stream.digest == ref.digest and existing.stream.size == ref.size:
            return "identical", existing
        raise LogConflict(
            f"log segment {existing.name} of source {existing.source} is already archived with "
            f"different content ({existing.stream.size} bytes stored, {ref.size} offered); the "
            "stored segment was kept. Another cluster may be archiving into the same source name."
        )

    def digest_stream(self, reader: IO[bytes]) -> tuple[int, str]:
        """Size and digest a stream would get if stored (same chunking), storing nothing."""
        from pyfastcdc.cy import FastCDC

        cdc = FastCDC(self.chunker["avg"], min_size=self.chunker["min"], max_size=self.chunker["max"],
                      seed=self.keys.chunker_seed)
        ids, size = [], 0
        for chunk in cdc.cut_stream(reader):
            ids.append(self.keys.chunk_id(chunk.data).hex())
            size += chunk.length
        return size, self.keys.stream_digest(ids, size)

    # -- reading --------------------------------------------------------------------------------
    def get_log(self, source: str, name: str) -> LogRecord | None:
        key = fmt.log_key(source, name)
        try:
            sealed = self.storage.get(key)
        except NotFoundError:
            return None
        return LogRecord.from_json(self._open_json("log", key, sealed))

    def list_log_names(self, source: str) -> list[str]:
        prefix = fmt.log_key(source, "")
        return sorted(i.key[len(prefix) :] for i in self.storage.list(prefix))

    def log_records(self, source: str, names: list[str] | None = None) -> list[LogRecord]:
        names = self.list_log_names(source) if names is None else names
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda n: self._must_log(source, n), names))

    def _must_log(self, source: str, name: str) -> LogRecord:
        rec = self.get_log(source, name)
        if rec is None:
            raise NotFoundError(f"log segment {fmt.log_key(source, name)} disappeared")
        return rec

    def list_sources(self) -> list[str]:
        found = set()
        for prefix in (fmt.MANIFEST_PREFIX, fmt.LOG_PREFIX):
            for info in self.storage.list(prefix):
                found.add(info.key[len(prefix) :].split("/", 1)[0])
        return sorted(found)

    def list_manifests(self, source: str | None = None) -> list[Manifest]:
        prefix = fmt.MANIFEST_PREFIX + (f"{source}/" if source else "")
        keys = sorted(i.key for i in self.storage.list(prefix))
        with ThreadPoolExecutor(8) as pool:
            manifests = list(pool.map(self._load_manifest_key, keys))
        return sorted(manifests, key=lambda m: (m.finished, m.id))

    def _load_manifest_key(self, key: str) -> Manifest:
        manifest = Manifest.from_json(self._open_json("manifest", key, self.storage.get(key)))
        if fmt.manifest_key(manifest.source, manifest.id) != key:
            raise IntegrityError(f"{key}: manifest claims to be {manifest.source}/{manifest.id}", key=key)
        return manifest

    def get_manifest(self, backup_id: str, source: str | None = None) -> Manifest:
        from drkit.errors import BackupNotFound

        prefix = fmt.MANIFEST_PREFIX + (f"{source}/" if source else "")
        for info in self.storage.list(prefix):
            if info.key.endswith("/" + backup_id):
                return self._load_manifest_key(info.key)
        raise BackupNotFound(f"no backup {backup_id}" + (f" for source {source}" if source else ""))

    def open_stream(self, ref: StreamRef) -> IO[bytes]:
        from drkit.repository.reader import open_stream

        return open_stream(self, ref)

    def server_time(self) -> datetime:
        return self.storage.now() or utcnow()
