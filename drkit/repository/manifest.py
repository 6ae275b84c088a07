"""Backup manifests and log-segment records -- the commit points of the repository.

A backup exists exactly when ``manifests/<source>/<backup id>`` exists (written last, after its
packs and index).  A log segment (a WAL file, an oplog slice, an AOF increment) exists exactly
when ``logs/<source>/<name>`` exists.  Both are sealed JSON; chunk references carry their pack
location so a restore needs no index (the index stays authoritative if a location is stale).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from drkit.repository.format import FORMAT_VERSION, LOG_RECORD_VERSION

ChunkRef = list  # [id_hex, pack_id, offset, length, raw_length]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def new_backup_id(now: datetime | None = None) -> str:
    now = now or utcnow()
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


@dataclass
class StreamRef:
    """One named stream of a backup: its size, keyed BLAKE3 digest and chunk list."""

    name: str
    size: int
    digest: str
    chunks: list[ChunkRef] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamRef:
        return cls(d["name"], int(d["size"]), d["digest"], list(d["chunks"]), dict(d.get("meta", {})))


@dataclass
class PartRef:
    """One part of a backup (format version 2): a node, a replica-set member, a shard.

    ``streams`` names the part's streams; their references are in :attr:`Manifest.streams`
    (with ``meta["part"]`` set to the part's name).  A part that failed (only in a manifest
    committed with ``partial: true``) has ``status == "failed"``, a ``reason`` and no streams.
    """

    name: str
    host: str = ""
    status: str = "ok"
    started: str = ""
    finished: str = ""
    streams: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    stored_bytes: int = 0
    reason: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartRef:
        return cls(name=d["name"], host=d.get("host", ""), status=d.get("status", "ok"),
                   started=d.get("started", ""), finished=d.get("finished", ""),
                   streams=list(d.get("streams", [])), metadata=dict(d.get("metadata", {})),
                   stored_bytes=int(d.get("stored_bytes", 0)), reason=d.get("reason"))


#: Fields a version-2 manifest adds to version 1 (left out when a version-1 manifest is written).
V2_FIELDS = ("parts", "parent", "provides", "partial")


@dataclass
class Manifest:
    """A committed backup.

    ``streams`` is every stream of the backup, the streams of all parts included (flattened, in
    part order; each carries ``meta["part"]`` when the backup has parts), so a reader that knows
    nothing of parts reads a multi-part backup's streams as before.  ``parts``, ``parent``,
    ``provides`` and ``partial`` are stored from format version 2 on; a version-1 manifest reads
    back with ``parts == []``, ``parent`` from its metadata where a dumper recorded one (e.g. an
    incremental that names its base), and ``provides == []`` (not recorded: the dumper's restore points decide).
    """

    id: str
    source: str
    datastore: str
    type: str
    started: str
    finished: str
    streams: list[StreamRef]
    metadata: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    drkit_version: str = ""
    format_version: int = FORMAT_VERSION
    stored_bytes: int = 0  # new bytes uploaded for this backup (after dedup + compression)
    parts: list[PartRef] = field(default_factory=list)
    parent: str | None = None  # the backup an incremental depends on
    #: Kinds of restore point this backup provides: "backup" (restorable as of its end), "range"
    #: (it starts or extends a chain that log records or increments make a time range).
    provides: list[str] = field(default_factory=lambda: ["backup"])
    partial: bool = False  # committed with failed parts (named in ``parts``), only if the dumper allows

    @property
    def failed_parts(self) -> list[str]:
        return [p.name for p in self.parts if p.status != "ok"]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.streams)

    def stream(self, name: str) -> StreamRef:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["kind"] = "backup"
        if self.format_version < 2:
            if self.parts or self.partial:
                raise ValueError("a version-1 manifest cannot hold parts; upgrade the repository")
            for name in V2_FIELDS:
                doc.pop(name)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        if doc.get("kind") != "backup":
            raise ValueError("not a backup manifest")
        doc.pop("kind")
        doc["streams"] = [StreamRef.from_dict(s) for s in doc["streams"]]
        if int(doc.get("format_version", 1)) < 2:
            for name in V2_FIELDS:
                doc.pop(name, None)
            parent = (doc.get("metadata") or {}).get("parent")
            doc["parent"] = parent if isinstance(parent, str) else None
            doc["provides"] = []
        else:
            doc["parts"] = [PartRef.from_dict(p) for p in doc.get("parts", [])]
        return cls(**doc)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "datastore": self.datastore,
            "type": self.type,
            "started": self.started,
            "finished": self.finished,
            "size": self.size,
            "stored_bytes": self.stored_bytes,
            "streams": [s.name for s in self.streams],
            "metadata": self.metadata,
            **({"parent": self.parent} if self.parent else {}),
            **({"parts": [{"name": p.name, "host": p.host, "status": p.status} for p in self.parts]}
               if self.parts else {}),
            **({"partial": True, "failed_parts": self.failed_parts} if self.partial else {}),
        }


@dataclass
class LogRecord:
    """A committed log segment (one WAL file, one oplog slice, ...)."""

    source: str
    name: str
    stream: StreamRef
    metadata: dict[str, Any] = field(default_factory=dict)
    pushed: str = field(default_factory=lambda: iso(utcnow()))
    format_version: int = LOG_RECORD_VERSION  # unchanged in repository format version 2

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["kind"] = "log"
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LogRecord:
        doc = json.loads(data)
        if doc.get("kind") != "log":
            raise ValueError("not a log record")
        doc.pop("kind")
        doc["stream"] = StreamRef.from_dict(doc["stream"])
        return cls(**doc)
