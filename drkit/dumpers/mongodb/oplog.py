"""Reading a MongoDB oplog: positions, continuity, identity, and raw BSON streams.

A *position* is the ``ts`` of the last oplog entry captured plus a fingerprint of that entry
(the first 16 hex digits of the SHA-256 of its raw BSON).  Before drkit continues from a position
it looks the entry up again:

* found with the same fingerprint: the oplog still holds everything after it -- continue;
* gone, and the oldest entry is newer: the oplog *rolled over* past it -- the entries in between
  are lost to drkit, the chain is broken (:class:`~drkit.errors.ChainBroken`): take a full backup;
* gone although older entries exist, or found with other content: this is not the oplog the
  position came from (the server was replaced or resynced, or its ``ts`` counter restarted) --
  also a broken chain.

Slices are named by (epoch, first ``ts``): the *epoch* is a short hash of the oplog's identity
(the collection UUID of ``local.oplog.rs``) and the server's incarnation (pid and start time), so
a server whose ``ts`` counter restarts with it never produces a name that collides with an
earlier slice (see docs/mongodb.md).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from drkit.errors import ChainBroken, IntegrityError, SourceError

OPLOG_DB = "local"
OPLOG_COLL = "oplog.rs"
_LEN = struct.Struct("<i")
MAX_DOC = 48 << 20  # a document (or oplog entry) is at most 16 MiB on a real server; with headroom


@dataclass(frozen=True)
class Position:
    """The last oplog entry captured: its ``ts`` as (seconds, increment), fingerprint, time."""

    ts: tuple[int, int]
    fp: str
    wall_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"ts": list(self.ts), "fp": self.fp, "wall_ms": self.wall_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Position:
        return cls((int(d["ts"][0]), int(d["ts"][1])), str(d["fp"]), int(d["wall_ms"]))

    def bson_ts(self) -> Any:
        from bson import Timestamp

        return Timestamp(*self.ts)


def fingerprint(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def entry_ts(doc: Any) -> tuple[int, int]:
    ts = doc["ts"]
    return (int(ts.time), int(ts.inc))


def entry_ms(doc: Any) -> int:
    """An entry's time: ``wall`` where present (MongoDB >= 4.2), else its ``ts`` seconds."""
    wall = doc.get("wall") if hasattr(doc, "get") else None
    if isinstance(wall, datetime):
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=UTC)
        return int(wall.timestamp() * 1000)
    return int(doc["ts"].time) * 1000


def position_of(raw_doc: Any) -> Position:
    """The position just after the entry ``raw_doc`` (a RawBSONDocument)."""
    return Position(entry_ts(raw_doc), fingerprint(bytes(raw_doc.raw)), entry_ms(raw_doc))


def raw_codec() -> Any:
    from bson import CodecOptions
    from bson.raw_bson import RawBSONDocument

    return CodecOptions(document_class=RawBSONDocument, tz_aware=True)


def oplog(client: Any) -> Any:
    """``local.oplog.rs`` with raw documents (bytes exactly as the server has them)."""
    from pymongo.read_concern import ReadConcern

    return client.get_database(OPLOG_DB, codec_options=raw_codec(),
                               read_concern=ReadConcern("majority")).get_collection(OPLOG_COLL)


def has_oplog(client: Any) -> bool:
    return OPLOG_COLL in client[OPLOG_DB].list_collection_names(filter={"name": OPLOG_COLL})


@dataclass(frozen=True)
class Identity:
    """Which oplog (and which run of the server) positions come from."""

    oplog_uuid: str
    incarnation: str
    host: str

    @property
    def epoch(self) -> str:
        return hashlib.sha256(f"{self.oplog_uuid}/{self.incarnation}".encode()).hexdigest()[:10]

    def as_dict(self) -> dict[str, Any]:
        return {"oplog_uuid": self.oplog_uuid, "incarnation": self.incarnation, "host": self.host,
                "epoch": self.epoch}


def identity(client: Any) -> Identity:
    infos = list(client[OPLOG_DB].list_collections(filter={"name": OPLOG_COLL}))
    uuid = ""
    if infos:
        raw = (infos[0].get("info") or {}).get("uuid")
        uuid = raw.hex() if isinstance(raw, bytes) else (str(raw) if raw is not None else "")
    status = client.admin.command("serverStatus")
    local = status.get("localTime")
    uptime_ms = int(status.get("uptimeMillis") or 0)
    started = int(local.timestamp() * 1000) - uptime_ms if isinstance(local, datetime) else 0
    # The start time to 10 s, so two readings of one run agree despite rounding and latency.
    return Identity(uuid, f"{status.get('pid')}@{started // 10_000}", str(status.get("host") or ""))


def server_now_ms(client: Any) -> int:
    """The server's clock (``hello.localTime``), in ms."""
    local = client.admin.command("hello").get("localTime")
    if not isinstance(local, datetime):
        raise SourceError("the server's hello reply has no localTime")
    if local.tzinfo is None:
        local = local.replace(tzinfo=UTC)
    return int(local.timestamp() * 1000)


def newest(client: Any) -> Any | None:
    return next(iter(oplog(client).find().sort("$natural", -1).limit(1)), None)


def oldest(client: Any) -> Any | None:
    return next(iter(oplog(client).find().sort("$natural", 1).limit(1)), None)


def check_position(client: Any, pos: Position, what: str) -> None:
    """Raise ChainBroken unless the oplog still holds ``pos`` (see the module doc)."""
    from bson import Timestamp

    found = next(iter(oplog(client).find({"ts": Timestamp(*pos.ts)}).limit(1)), None)
    if found is not None and fingerprint(bytes(found.raw)) == pos.fp:
        return
    first = oldest(client)
    when = _iso_ms(pos.wall_ms)
    if found is None and (first is None or entry_ts(first) > pos.ts):
        since = f" (its oldest entry is from {_iso_ms(entry_ms(first))})" if first is not None else ""
        raise ChainBroken(
            f"the oplog has rolled over past {what} (ts {pos.ts[0]}:{pos.ts[1]}, {when}){since}: the operations "
            "after it are no longer on the server, so the chain of incrementals is broken there. Take a full "
            "backup ('drkit backup SOURCE --type full') to start a new chain; keep slices small enough to be "
            "shipped before the oplog wraps (a larger oplogSizeMB, or 'drkit mongodb follow')")
    raise ChainBroken(
        f"the oplog no longer holds {what} (ts {pos.ts[0]}:{pos.ts[1]}, {when}) as it was captured: the server "
        "was replaced or resynced, or its ts counter restarted. The chain of incrementals cannot continue; take "
        "a full backup to start a new chain")


def read_after(client: Any, after: tuple[int, int] | None, until: tuple[int, int] | None = None,
               *, batch_size: int = 1000) -> Any:
    """A cursor over the entries with ``after < ts <= until`` in oplog order (raw documents)."""
    from bson import Timestamp

    cond: dict[str, Any] = {}
    if after is not None:
        cond["$gt"] = Timestamp(*after)
    if until is not None:
        cond["$lte"] = Timestamp(*until)
    query = {"ts": cond} if cond else {}
    return oplog(client).find(query, batch_size=batch_size).sort("$natural", 1)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- raw BSON streams ---------------------------------------------------------------------------

class DocsReader(io.RawIOBase):
    """A binary stream of the concatenated raw BSON documents an iterator yields (bounded memory:
    one document at a time).  ``on_doc`` sees every document (counting, positions)."""

    def __init__(self, docs: Iterable[Any], on_doc: Any = None) -> None:
        self._docs = iter(docs)
        self._buf = memoryview(b"")
        self._on = on_doc
        self.count = 0
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            doc = next(self._docs, None)
            if doc is None:
                return 0
            raw = bytes(doc.raw) if hasattr(doc, "raw") else bytes(doc)
            if self._on is not None:
                self._on(doc)
            self.count += 1
            self.size += len(raw)
            self._buf = memoryview(raw)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _read_exactly(fh: IO[bytes], n: int) -> bytes:
    """``n`` bytes, or fewer only at the end of the stream (a raw stream may return short reads)."""
    data = fh.read(n)
    if data is None or len(data) >= n or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        more = fh.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def iter_raw(fh: IO[bytes], what: str) -> Iterator[bytes]:
    """The raw BSON documents of a stream written by :class:`DocsReader`; a torn or oversized
    document raises IntegrityError naming ``what``."""
    offset = 0
    while True:
        head = _read_exactly(fh, 4)
        if not head:
            return
        if len(head) < 4:
            raise IntegrityError(f"{what}: truncated BSON document at byte {offset}")
        (n,) = _LEN.unpack(head)
        if n < 5 or n > MAX_DOC:
            raise IntegrityError(f"{what}: bad BSON document length {n} at byte {offset}")
        body = _read_exactly(fh, n - 4)
        if len(body) != n - 4 or body[-1:] != b"\x00":
            raise IntegrityError(f"{what}: truncated BSON document at byte {offset}")
        offset += n
        yield head + body


def chain_start(client: Any, prev: tuple[int, int]) -> tuple[int, int]:
    """The ``ts`` of the first entry of the transaction chain an entry's ``prevOpTime`` points
    into (walking ``prevOpTime`` back to a null one)."""
    from bson import Timestamp

    coll = oplog(client)
    ts = Timestamp(*prev)
    while True:
        doc = next(iter(coll.find({"ts": ts}).limit(1)), None)
        if doc is None:
            raise SourceError(f"a transaction began at ts {ts.time}:{ts.inc}, which the oplog no longer holds; "
                              "take the backup again")
        up = doc.get("prevOpTime")
        nxt = up.get("ts") if up is not None else None
        if nxt is None or nxt == Timestamp(0, 0):
            return (int(ts.time), int(ts.inc))
        ts = nxt


def just_before(ts: tuple[int, int]) -> tuple[int, int]:
    """The greatest ``ts`` value below ``ts`` (a window that starts *at* ``ts``)."""
    return (ts[0], ts[1] - 1) if ts[1] > 0 else (ts[0] - 1, 0xFFFFFFFF)
