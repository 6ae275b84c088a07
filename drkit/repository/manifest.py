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

from drkit.repository.format import FORMAT_VERSION

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
class Manifest:
    """A committed backup."""

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
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        if doc.get("kind") != "backup":
            raise ValueError("not a backup manifest")
        doc.pop("kind")
        doc["streams"] = [StreamRef.from_dict(s) for s in doc["streams"]]
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
        }


@dataclass
class LogRecord:
    """A committed log segment (one WAL file, one oplog slice, ...)."""

    source: str
    name: str
    stream: StreamRef
    metadata: dict[str, Any] = field(default_factory=dict)
    pushed: str = field(default_factory=lambda: iso(utcnow()))
    format_version: int = FORMAT_VERSION

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
