"""The backup transaction: the one commit sequence every dumper goes through.

``repo.begin_backup(source, datastore, type)`` allocates the backup's id (sortable by its start)
and opens a transaction.  The dumper writes streams into it -- directly
(:meth:`BackupTransaction.write_stream`), or per *part* (a node, a replica-set member, a shard:
``part = txn.part("node1", host=...)``, ``part.write_stream(...)``, ``part.finish(...)`` or
``part.fail(reason)``) -- and :meth:`BackupTransaction.commit` writes the manifest, the commit.

Each finished (or failed) part commits its own *part record*
``parts/<source>/<backup id>/<part name>`` (sealed JSON, aad ``"part:" + key``), written after
the part's packs and index, so parts can come from separate processes on separate hosts: another
process opens the same transaction with ``repo.join_backup(source, backup_id)`` and adds parts.
The coordinator's commit collects the part records; it refuses to commit while a part failed or
is missing, unless the dumper says partial backups are restorable (``partial_ok=True``: the
manifest then says ``partial: true`` and names the failed parts -- never silently).

A transaction that is abandoned leaves no manifest.  ``with repo.begin_backup(...) as txn:``
aborts on an exception (or when the block ends without a commit): it deletes the part records this
process wrote, nothing else.  Packs and indexes stay, unreferenced, for prune.  A process that is
killed leaves its part records too; no reader looks at part records of a backup that has no
manifest (docs/repository-format.md, "Parts and part records").
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from drkit.errors import AlreadyExistsError, DrkitError, NotFoundError, RepositoryError
from drkit.repository import crashpoints
from drkit.repository import format as fmt
from drkit.repository.manifest import Manifest, PartRef, StreamRef, iso, new_backup_id, parse_iso, utcnow

if TYPE_CHECKING:
    from drkit.repository.repo import Repository
    from drkit.repository.writer import WriteSession

log = logging.getLogger(__name__)

_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


class IncompleteBackup(DrkitError):
    """A backup's commit was refused: a part failed or is missing (nothing was committed)."""


@dataclass
class PartRecord:
    """The commit of one part: ``parts/<source>/<backup id>/<name>``."""

    backup: str
    source: str
    name: str
    host: str
    status: str  # "ok" | "failed"
    started: str
    finished: str
    streams: list[StreamRef] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    stored_bytes: int = 0
    reason: str | None = None
    format_version: int = 2

    @property
    def key(self) -> str:
        return fmt.part_key(self.source, self.backup, self.name)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["kind"] = "part"
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PartRecord:
        doc = json.loads(data)
        if doc.get("kind") != "part":
            raise ValueError("not a part record")
        doc.pop("kind")
        doc["streams"] = [StreamRef.from_dict(s) for s in doc["streams"]]
        return cls(**doc)

    def ref(self) -> PartRef:
        return PartRef(name=self.name, host=self.host, status=self.status, started=self.started,
                       finished=self.finished, streams=[s.name for s in self.streams], metadata=self.metadata,
                       stored_bytes=self.stored_bytes, reason=self.reason)


class _Streams:
    """A :class:`WriteSession` view whose streams land in their owner (the backup or a part).

    Helpers written against a session (``write_stream``, ``write_chunks``, ``cdc``,
    ``chunks_new``...) take it unchanged; every stream they write becomes one of the owner's."""

    def __init__(self, session: WriteSession, sink: Callable[[StreamRef], None]) -> None:
        self._session = session
        self._sink = sink

    def write_stream(self, name: str, reader: IO[bytes], meta: dict | None = None,
                     progress: Callable[[int], None] | None = None) -> StreamRef:
        ref = self._session.write_stream(name, reader, meta, progress)
        self._sink(ref)
        return ref

    def write_chunks(self, name: str, chunks: Iterable[bytes | bytearray], meta: dict | None = None,
                     progress: Callable[[int], None] | None = None) -> StreamRef:
        ref = self._session.write_chunks(name, chunks, meta, progress)
        self._sink(ref)
        return ref

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class _WritesStreams:
    """``write_stream`` / ``write_chunks`` into ``self.session`` (a part's, or the backup's own)."""

    session: _Streams

    def write_stream(self, name: str, reader: IO[bytes], meta: dict | None = None,
                     progress: Callable[[int], None] | None = None) -> StreamRef:
        """Store one stream (of the part, or of the backup outside any part)."""
        return self.session.write_stream(name, reader, meta, progress)

    def write_chunks(self, name: str, chunks: Iterable[bytes | bytearray], meta: dict | None = None,
                     progress: Callable[[int], None] | None = None) -> StreamRef:
        return self.session.write_chunks(name, chunks, meta, progress)


class Part(_WritesStreams):
    """One part of a backup, written by this process.  Obtain with :meth:`BackupTransaction.part`."""

    def __init__(self, txn: BackupTransaction, name: str, host: str) -> None:
        self.txn = txn
        self.name = name
        self.host = host
        self.started = utcnow()
        self.streams: list[StreamRef] = []
        self.state = "open"  # open | ok | failed | aborted
        self.record: PartRecord | None = None
        self._session: _Streams | None = None

    @property
    def session(self) -> _Streams:
        """The part's write session (a session view: its streams are the part's)."""
        self._check_open()
        if self._session is None:
            self._session = _Streams(self.txn.repo.session(), self._add)
        return self._session

    def _add(self, ref: StreamRef) -> None:
        ref.meta["part"] = self.name
        self.streams.append(ref)

    def _check_open(self) -> None:
        if self.state != "open":
            raise DrkitError(f"part {self.name} of backup {self.txn.id} is already {self.state}")

    def finish(self, status: str = "ok", metadata: dict[str, Any] | None = None,
               started: datetime | None = None, finished: datetime | None = None) -> PartRecord:
        """Upload the part's last pack and its index, then commit its part record."""
        if status != "ok":
            reason = str((metadata or {}).get("reason") or f"status {status}")
            return self.fail(reason, metadata=metadata)
        self._check_open()
        stored = self._session._session.finish() if self._session is not None else 0
        record = self._record("ok", metadata, started, finished, stored)
        self.state = "ok"
        return record

    def fail(self, reason: str, *, metadata: dict[str, Any] | None = None) -> PartRecord:
        """Record the part as failed (its packs stay unreferenced); the backup will not commit
        unless the dumper allows partial backups."""
        self._check_open()
        self._close()
        record = self._record("failed", metadata, None, None, 0, reason=reason)
        self.state = "failed"
        return record

    def _record(self, status: str, metadata: dict[str, Any] | None, started: datetime | None,
                finished: datetime | None, stored: int, reason: str | None = None) -> PartRecord:
        record = PartRecord(
            backup=self.txn.id, source=self.txn.source, name=self.name, host=self.host, status=status,
            started=iso(started or self.started), finished=iso(finished or utcnow()),
            streams=list(self.streams) if status == "ok" else [], metadata=dict(metadata or {}),
            stored_bytes=stored, reason=reason,
        )
        self.txn._put_part(record)
        self.record = record
        return record

    def _close(self) -> None:
        if self._session is not None:
            self._session._session.close()


class BackupTransaction(_WritesStreams):
    """One backup being written; see the module documentation."""

    def __init__(self, repo: Repository, source: str, datastore: str, type: str,  # noqa: A002
                 *, parent: str | None = None, host: str | None = None, started: datetime | None = None,
                 backup_id: str | None = None, coordinator: bool = True) -> None:
        if not source or "/" in source:
            raise DrkitError(f"invalid source name {source!r}")
        self.repo = repo
        self.source = source
        self.datastore = datastore
        self.type = type
        self.parent = parent
        self.host = host or socket.gethostname()
        self.started = started or utcnow()
        self.id = backup_id or new_backup_id(self.started)
        self.coordinator = coordinator
        self.state = "open"  # open | committed | aborted
        self.streams: list[StreamRef] = []
        self.manifest: Manifest | None = None
        self._session: _Streams | None = None
        self._parts: dict[str, Part] = {}
        self._written: list[str] = []  # part record keys this object wrote

    @classmethod
    def join(cls, repo: Repository, source: str, backup_id: str) -> BackupTransaction:
        """The transaction ``backup_id`` of ``source`` begun by another process, for adding parts."""
        if not _BACKUP_ID.match(backup_id):
            raise DrkitError(f"{backup_id!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxx)")
        if repo.storage.stat(fmt.manifest_key(source, backup_id)) is not None:
            raise DrkitError(f"backup {backup_id} of source {source} is already committed; "
                             "parts cannot be added to it")
        started = parse_iso(f"{backup_id[:4]}-{backup_id[4:6]}-{backup_id[6:8]}T{backup_id[9:11]}:"
                            f"{backup_id[11:13]}:{backup_id[13:15]}Z")
        return cls(repo, source, "", "", started=started, backup_id=backup_id, coordinator=False)

    # -- streams ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.state != "open":
            raise DrkitError(f"backup {self.id} of source {self.source} is already {self.state}")

    @property
    def session(self) -> _Streams:
        """The backup's own write session (a session view: its streams are the backup's)."""
        self._check_open()
        if not self.coordinator:
            raise DrkitError(f"backup {self.id} was joined to add parts; write streams into a part")
        if self._session is None:
            self._session = _Streams(self.repo.session(), self.streams.append)
        return self._session

    # -- parts -----------------------------------------------------------------------------
    def part(self, name: str, *, host: str | None = None) -> Part:
        """Open the part ``name`` (written by this process; ``host`` defaults to this host)."""
        self._check_open()
        if self.repo.format_version < 2:
            raise RepositoryError(
                f"the repository at {self.repo.storage.url} has format version {self.repo.format_version}, "
                "which has no backup parts; run 'drkit repository upgrade' (every drkit that writes to it must "
                "be new enough to read version 2)")
        if not _PART_NAME.match(name):
            raise DrkitError(f"invalid part name {name!r}: letters, digits and . _ @ : - (at most 128), "
                             "starting with a letter or digit")
        if name in self._parts or self.repo.storage.stat(fmt.part_key(self.source, self.id, name)) is not None:
            raise DrkitError(f"backup {self.id} of source {self.source} already has a part {name}")
        part = Part(self, name, host or socket.gethostname())
        self._parts[name] = part
        return part

    def _put_part(self, record: PartRecord) -> None:
        key = record.key
        crashpoints.hit("part.before_commit")
        try:
            self.repo.storage.put(key, self.repo._seal_json("part", key, record.to_json()))
        except AlreadyExistsError:
            raise DrkitError(f"backup {self.id} of source {self.source} already has a part {record.name} "
                             "(written by another process)") from None
        self._written.append(key)
        crashpoints.hit("part.after_commit")

    def part_records(self) -> list[PartRecord]:
        """Every part record committed for this backup so far (by any process), by name."""
        prefix = fmt.part_key(self.source, self.id, "")
        out = []
        for info in sorted(self.repo.storage.list(prefix), key=lambda i: i.key):
            try:
                sealed = self.repo.storage.get(info.key)
            except NotFoundError:
                continue  # aborted meanwhile
            record = PartRecord.from_json(self.repo._open_json("part", info.key, sealed))
            if record.key != info.key:
                from drkit.errors import IntegrityError

                raise IntegrityError(f"{info.key}: part record claims to be {record.key}", key=info.key)
            out.append(record)
        return out

    # -- commit / abort --------------------------------------------------------------------
    def commit(self, metadata: dict[str, Any] | None = None, *, partial_ok: bool = False,
               expected_parts: Iterable[str] | None = None, provides: list[str] | None = None,
               finished: datetime | None = None) -> Manifest:
        """Write the backup's last pack and index, collect the part records, write the manifest.

        Refused (:class:`IncompleteBackup`, nothing committed) while a part this process opened is
        unfinished, or a part failed or is missing -- one of ``expected_parts`` without a record --
        unless ``partial_ok`` (the dumper can restore a partial backup): the manifest then has
        ``partial: true`` and its ``parts`` name the failed and missing ones.
        """
        self._check_open()
        if not self.coordinator:
            raise DrkitError(f"backup {self.id} was joined to add parts; the process that began it commits it")
        unfinished = sorted(n for n, p in self._parts.items() if p.state == "open")
        if unfinished:
            raise IncompleteBackup(f"backup {self.id} of source {self.source}: part(s) {', '.join(unfinished)} "
                                   "neither finished nor failed; nothing was committed")
        stored = self._session._session.finish() if self._session is not None else 0
        records = self.part_records()
        have = {r.name for r in records}
        missing = sorted(set(expected_parts or ()) - have)
        failed = [r for r in records if r.status != "ok"]
        if (failed or missing) and not partial_ok:
            why = [f"{r.name} on {r.host} failed: {r.reason}" for r in failed]
            why += [f"{n} has no part record" for n in missing]
            raise IncompleteBackup(f"backup {self.id} of source {self.source} not committed: {'; '.join(why)}. "
                                   "Fix the cause and take the backup again")
        ok = [r for r in records if r.status == "ok"]
        if (failed or missing) and not ok and not self.streams:
            raise IncompleteBackup(f"backup {self.id} of source {self.source} not committed: every part failed")
        parts = [r.ref() for r in records]
        parts += [PartRef(name=n, status="missing", reason="no part record") for n in missing]
        streams = list(self.streams) + [s for r in ok for s in r.streams]
        version = self.repo.format_version
        from drkit import __version__

        manifest = Manifest(
            id=self.id, source=self.source, datastore=self.datastore, type=self.type, started=iso(self.started),
            finished=iso(finished or utcnow()), streams=streams, metadata=dict(metadata or {}), host=self.host,
            drkit_version=__version__, format_version=version,
            stored_bytes=stored + sum(r.stored_bytes for r in ok),
            parts=parts, parent=self.parent, provides=list(provides) if provides is not None else ["backup"],
            partial=bool(failed or missing),
        )
        if manifest.partial:
            log.warning("backup %s of source %s is committed PARTIAL: part(s) %s did not finish", self.id,
                        self.source, ", ".join(manifest.failed_parts))
        crashpoints.hit("backup.before_commit")
        self.repo.commit_manifest(manifest)
        crashpoints.hit("backup.after_commit")
        self.state = "committed"
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        """Give the backup up: close the sessions, delete the part records this object wrote.
        Packs and indexes already written stay for prune.  Idempotent; a no-op once committed."""
        if self.state != "open":
            return
        self.state = "aborted"
        if self._session is not None:
            self._session._session.close()
        for part in self._parts.values():
            part._close()
            if part.state == "open":
                part.state = "aborted"
        for key in self._written:
            try:
                self.repo.storage.delete(key)
            except DrkitError as exc:
                log.warning("could not delete part record %s of the abandoned backup %s (%s); no manifest "
                            "names it, so nothing reads it", key, self.id, exc)

    def close(self) -> None:
        """End this object's share of the transaction: a coordinator that did not commit aborts;
        a joined transaction keeps the part records it wrote (its parts are committed)."""
        if self.coordinator:
            self.abort()
            return
        if self._session is not None:
            self._session._session.close()
        for part in self._parts.values():
            part._close()

    def __enter__(self) -> BackupTransaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
