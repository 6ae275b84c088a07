"""The repository: init/open, the index, manifests and log records, on top of a Storage."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import zstandard

from drkit.errors import (
    AlreadyExistsError,
    ConfigError,
    DrkitError,
    IntegrityError,
    LogConflict,
    NotFoundError,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    StorageError,
    UnsupportedFormat,
    WrongKey,
)
from drkit.repository import crashpoints, logcat
from drkit.repository import format as fmt
from drkit.repository.crypto import Keys, random_hex
from drkit.repository.index import Index, decode_index
from drkit.repository.keys import (
    DamagedEnvelope,
    Wrapper,
    could_be_for,
    encode_envelope,
    inspect_envelope,
    parse_envelope,
)
from drkit.repository.manifest import LogRecord, Manifest, StreamRef, iso, utcnow
from drkit.repository.memory import tune_malloc
from drkit.repository.writer import WriteSession, cpu_workers
from drkit.storage.base import Storage

if TYPE_CHECKING:
    from drkit.repository.transaction import BackupTransaction

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
    def init(cls, storage: Storage, wrapper: Wrapper, master: bytes | None = None, *,
             version: int = fmt.FORMAT_VERSION) -> Repository:
        """Create a repository: a random master key, wrapped by ``wrapper``; then the config.

        ``version`` is the format version (default: the newest; 1 only for tests of old
        repositories)."""
        import os

        if version not in fmt.SUPPORTED_VERSIONS:
            raise ConfigError(f"format version {version} is not one this drkit writes "
                              f"({', '.join(map(str, fmt.SUPPORTED_VERSIONS))})")
        if storage.stat(fmt.CONFIG_KEY) is not None:
            raise RepositoryExists(f"a repository already exists at {storage.url}")
        lost = cls._no_config(storage)
        if not isinstance(lost, RepositoryNotFound):
            raise RepositoryExists(str(lost))
        master = master or os.urandom(32)
        keys = Keys.from_master(master)
        config = {
            "format": fmt.FORMAT_NAME,
            "version": version,
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
            raise cls._no_config(storage) from None
        try:
            doc = json.loads(raw)
            config = doc["config"]
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"{fmt.CONFIG_KEY}: not a drkit repository config", key=fmt.CONFIG_KEY) from None
        if config.get("format") != fmt.FORMAT_NAME:
            raise RepositoryNotFound(f"{storage.url} does not hold a drkit repository")
        if config.get("version") not in fmt.SUPPORTED_VERSIONS:
            raise UnsupportedFormat(
                f"repository format version {config.get('version')} is not supported by this drkit "
                f"(supports {', '.join(map(str, fmt.SUPPORTED_VERSIONS))}); upgrade drkit"
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
    def _no_config(storage: Storage) -> RepositoryError:
        """No ``config``: a place with no repository, or a repository that lost its config object.
        The second must never be mistaken for the first (``init`` over it would orphan every
        backup), so a few other objects of the format are looked for."""
        for prefix in (fmt.KEYS_PREFIX, fmt.MANIFEST_PREFIX, fmt.DATA_PREFIX, fmt.LOG_PREFIX):
            try:
                found = next(iter(storage.list(prefix)), None)
            except StorageError:  # e.g. a local repository directory that does not exist yet
                break
            if found is not None:
                return RepositoryError(
                    f"the repository at {storage.url} has lost its config object (key 'config'), but it holds "
                    f"other repository objects (e.g. {found.key}): it is damaged, not absent. Do not run "
                    "'drkit init' over it; put back a copy of 'config' (it is plaintext, the same in every copy "
                    "or replica of this repository) and run 'drkit verify'"
                )
        return RepositoryNotFound(f"no drkit repository at {storage.url} (create one with 'drkit init')")

    @staticmethod
    def _unwrap_any(storage: Storage, wrapper: Wrapper, repo_id: str) -> tuple[bytes, str]:
        """The master key and the id of the envelope ``wrapper`` unwraps it from.

        Every envelope is read and checked first, so a damaged one is named even when another
        opens the repository (a logged warning: nothing is lost).  When none opens and one of the
        damaged envelopes could be the configured key's, the repository is damaged
        (IntegrityError, exit 5); otherwise the key is wrong (WrongKey, exit 4).  Either message
        names the damaged envelopes and the intact ones the key did not unlock
        (docs/repository-format.md, "Key envelopes").
        """
        entries = sorted(storage.list(fmt.KEYS_PREFIX), key=lambda i: i.key)
        if not entries:
            raise IntegrityError(f"{storage.url}: repository has no key envelopes (keys/ is empty)", key="keys/")
        intact: list[tuple[str, dict[str, Any]]] = []
        damaged: list[tuple[str, dict[str, Any]]] = []
        for info in entries:
            try:
                data = storage.get(info.key)
            except NotFoundError:
                continue  # removed by a concurrent 'key remove' or 'key rotate' after the listing
            env, summary = inspect_envelope(data)
            if env is None:
                damaged.append((info.key, summary))
            else:
                intact.append((info.key, env))
        refusals = []
        for key, env in intact:
            key_id = key[len(fmt.KEYS_PREFIX) :]
            try:
                master = wrapper.unwrap(env, repo_id, key_id)
            except WrongKey as exc:
                refusals.append(f"{key}: {exc}")
                continue
            for dkey, summary in damaged:
                log.warning(
                    "key envelope %s is damaged (%s); the repository opened through %s, so nothing is lost. "
                    "Remove it with 'drkit key remove %s' and, if its key is still needed, wrap the master key "
                    "with that key again with 'drkit key add'", dkey, summary["problem"], key,
                    dkey[len(fmt.KEYS_PREFIX) :],
                )
            return master, key_id
        if not intact and not damaged:
            raise IntegrityError(f"{storage.url}: repository has no key envelopes (keys/ is empty)", key="keys/")
        unlocked = (
            f"the configured {wrapper.description} does not unlock the other {len(intact)} key envelope(s) "
            f"({'; '.join(refusals)})" if intact else "no other key envelope exists"
        )
        broken = "; ".join(f"{k} is damaged ({s['problem']})" for k, s in damaged)
        suspects = [k for k, s in damaged if could_be_for(s["kind"], wrapper)]
        if suspects:
            raise IntegrityError(
                f"cannot open the repository at {storage.url}: {broken}, and {unlocked}. The damaged envelope "
                f"{' or '.join(suspects)} may be the one of the configured key: restore it from a copy of the "
                "repository (a replica, storage versioning, a backup of the bucket or directory), or configure "
                "another key the repository has an envelope for. If the configured key is itself wrong, fix the "
                "encryption settings", key=suspects[0])
        unchecked = [k for k, env in intact if "check" not in env]
        hints = ""
        if damaged:
            hints += (f"; also {broken}, but not for this kind of key ({wrapper.description}); "
                      "run 'drkit verify' with a working key")
        if unchecked:
            hints += (f"; {', '.join(unchecked)} predate(s) envelope self-checks, so damage to its wrapped key "
                      "would look the same: if you are sure of the key, compare it with a copy of the repository")
        raise WrongKey(
            f"the configured {wrapper.description} does not unlock the repository at {storage.url} "
            f"(tried {len(intact)} key envelope(s): {'; '.join(refusals) or 'none intact'}){hints}; "
            "check the encryption settings -- if this key opened the repository before, its envelope under "
            "keys/ may have been deleted: put keys/ back from a copy, or open it with another key (an escrow "
            "key added with 'drkit key add') and add this one again"
        )

    def list_keys(self) -> list[dict[str, Any]]:
        """Every envelope under ``keys/``, damaged ones included and marked; never key material."""
        out = []
        for info in sorted(self.storage.list(fmt.KEYS_PREFIX), key=lambda i: i.key):
            key_id = info.key[len(fmt.KEYS_PREFIX) :]
            try:
                data = self.storage.get(info.key)
            except NotFoundError:
                continue  # removed since the listing
            _env, summary = inspect_envelope(data)
            out.append({"id": key_id, **summary, "in_use": key_id == self.key_id})
        return out

    def add_key(self, new_wrapper: Wrapper) -> str:
        """Wrap the master key with ``new_wrapper`` in one more envelope; prove it unwraps.

        Returns the new key id.  If the new envelope does not read back, check and unwrap to the
        master key, it is removed again and the error says so; the other envelopes are untouched.
        """
        if self._master is None:
            raise RepositoryError("repository was opened without its master key")
        key_id = random_hex(8)
        key = f"{fmt.KEYS_PREFIX}{key_id}"
        self.storage.put(key, encode_envelope(new_wrapper.wrap(self._master, self.id, key_id)))

        def undo() -> None:
            try:
                self.storage.delete(key)
            except DrkitError as exc:  # the original failure matters more; say what is left behind
                log.warning("could not remove the unusable new key envelope %s (%s); remove it with "
                            "'drkit key remove %s'", key, exc, key_id)

        try:
            again = new_wrapper.unwrap(parse_envelope(self.storage.get(key)), self.id, key_id)
        except DamagedEnvelope as exc:
            undo()
            raise IntegrityError(f"{key}: the new key envelope read back damaged ({exc}); it was removed and "
                                 "nothing changed: check the storage", key=key) from None
        except WrongKey as exc:
            undo()
            raise WrongKey(f"the {new_wrapper.description} wrapped the master key but cannot unwrap it again "
                           f"({exc}); the new envelope was removed and nothing changed") from None
        except BaseException:
            undo()
            raise
        if again != self._master:
            undo()
            raise RepositoryError("the new key envelope does not unwrap to the master key; nothing changed")
        return key_id

    def remove_key(self, key_id: str, *, force: bool = False) -> list[str]:
        """Delete the envelope ``keys/<key_id>``; returns the ids of the envelopes left.

        Refused (ConfigError, nothing changed) when no intact envelope would be left, and -- without
        ``force`` -- for the envelope this repository was opened with: that one is the only envelope
        known to be unwrappable by a key someone holds, and every process configured with its key
        (e.g. a database's archive command) stops working without it.
        """
        key = f"{fmt.KEYS_PREFIX}{key_id}"
        envelopes = {k["id"]: k for k in self.list_keys()}
        if key_id not in envelopes:
            raise ConfigError(f"the repository at {self.storage.url} has no key envelope {key}; "
                              "'drkit key list' shows the ids")
        left = [k for k in envelopes.values() if k["id"] != key_id and not k["damaged"]]
        if not left:
            raise ConfigError(f"refusing to remove {key}: it is the last intact key envelope, and without one "
                              "nothing in the repository can be read. Add another key first ('drkit key add')")
        if key_id == self.key_id and not force:
            raise ConfigError(
                f"refusing to remove {key}: it is the envelope the configured key opened the repository with, and "
                "every process configured with that key would fail with exit 4. Point the configuration at "
                "another key that opens the repository and remove it from there, use 'drkit key rotate' to "
                "replace it, or pass --force")
        self.storage.delete(key)
        return sorted(k for k in envelopes if k != key_id)

    def rotate_key(self, new_wrapper: Wrapper) -> str:
        """Wrap the master key with ``new_wrapper``, prove it unwraps, then drop the old envelope
        (:meth:`add_key`, then :meth:`remove_key` of the one in use).

        No data is rewritten.  Returns the new key id.
        """
        key_id = self.add_key(new_wrapper)
        self.remove_key(self.key_id, force=True)
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
        """Write the manifest -- the commit.  It never replaces an existing one.  A manifest is
        written in the repository's format version (a version-1 repository gets version-1 JSON,
        which older drkit reads)."""
        if manifest.format_version > self.format_version:
            manifest.format_version = self.format_version
        key = fmt.manifest_key(manifest.source, manifest.id)
        self.storage.put(key, self._seal_json("manifest", key, manifest.to_json()))
        return key

    @property
    def format_version(self) -> int:
        """The repository's format version (its config): what new manifests are written as."""
        return int(self.config["version"])

    def begin_backup(self, source: str, datastore: str, type: str, *, parent: str | None = None,  # noqa: A002
                     host: str | None = None, started: datetime | None = None) -> BackupTransaction:
        """Start a backup: the core allocates its id (from ``started``, default now); the dumper
        writes streams (or parts) into the returned transaction and commits it (see
        :mod:`drkit.repository.transaction`)."""
        from drkit.repository.transaction import BackupTransaction

        return BackupTransaction(self, source, datastore, type, parent=parent, host=host, started=started)

    def join_backup(self, source: str, backup_id: str) -> BackupTransaction:
        """Open a backup another process began, to add parts to it (e.g. one process per node)."""
        from drkit.repository.transaction import BackupTransaction

        return BackupTransaction.join(self, source, backup_id)

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
        logcat.maybe_seal(self, source, name)
        return "stored", record

    def seal_log_catalog(self, source: str, *, min_records: int = 1, before: datetime | None = None,
                         delete_replaced: bool = False) -> logcat.SealResult:
        """Seal complete UTC days (ended before ``before``, default the storage clock minus an
        hour) of single log records into catalog objects, each read back before it counts.
        ``delete_replaced`` (forget/prune only, holding the prune lease) then deletes the single
        records the catalog objects hold identically.  See drkit/repository/logcat.py."""
        return logcat.seal(self, source, min_records=min_records, before=before,
                           delete_replaced=delete_replaced)

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
        """The record ``name``: from a catalog object holding it (authoritative), else its
        single object; None when neither exists."""
        held = logcat.lookup_for(self).find(self, source, name)
        if held is not None:
            return held
        key = fmt.log_key(source, name)
        try:
            sealed = self.storage.get(key)
        except NotFoundError:
            return None
        return LogRecord.from_json(self._open_json("log", key, sealed))

    def list_log_names(self, source: str) -> list[str]:
        """Names of the records in catalog objects and single objects (a name two catalog
        objects disagree on is left out; ``load_catalog`` reports it)."""
        return logcat.scan(self, source).names()

    def log_records(self, source: str, names: list[str] | None = None) -> list[LogRecord]:
        view = logcat.scan(self, source)
        names = view.names() if names is None else names

        def one(n: str) -> LogRecord:
            if n in view.conflicts:
                a, b = view.conflicts[n]
                raise IntegrityError(f"log record {n} of {source} differs between {a} and {b}; run 'drkit verify'", key=a)
            rec = view.records.get(n) or logcat.read_single(self, source, n)
            if rec is None:
                raise NotFoundError(f"log segment {fmt.log_key(source, n)} disappeared")
            return rec

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, names))

    def _must_log(self, source: str, name: str) -> LogRecord:
        rec = self.get_log(source, name)
        if rec is None:
            raise NotFoundError(f"log segment {fmt.log_key(source, name)} disappeared")
        return rec

    def delete_log_records(self, source: str, names: Iterable[str]) -> list[str]:
        """Remove log records (``forget`` alone calls this, holding the prune lease).  Returns the
        keys that could not be deleted.  The data they reference stays until ``prune``.
        A name held by a catalog object is removed by rewriting that object without it."""
        return logcat.delete_records(self, source, names)

    def delete_manifests(self, source: str, backup_ids: Iterable[str]) -> list[str]:
        """Remove backup manifests (``forget`` alone calls this, holding the prune lease), and
        then the part records of each removed one (read only before its commit)."""
        ids = list(backup_ids)
        failed = self.storage.delete_many([fmt.manifest_key(source, b) for b in ids])
        gone = [b for b in ids if fmt.manifest_key(source, b) not in set(failed)]
        parts = [i.key for b in gone for i in self.storage.list(f"{fmt.PART_PREFIX}{source}/{b}/")]
        return failed + self.storage.delete_many(parts)

    def list_sources(self) -> list[str]:
        found = set()
        for prefix in (fmt.MANIFEST_PREFIX, fmt.LOG_PREFIX, fmt.LOGCAT_PREFIX):
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
