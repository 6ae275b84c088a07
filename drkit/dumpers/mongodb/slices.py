"""Oplog slices: incrementals as log records, shipped one-shot (cron) or by the follower.

A slice is a log record named ``<epoch>.<ts seconds, 10 digits>.<ts increment, 10 digits>`` of its
first entry (see :mod:`.oplog` for the epoch), holding the raw BSON entries after its ``after``
position up to its ``last`` one.  Slices chain by position: a slice continues the one whose
``last`` is its ``after``.  Its metadata:

``epoch``, ``identity``, ``after`` / ``last`` (positions: ts, fingerprint, time), ``entries``,
``first_ms`` / ``last_ms`` (entry times), ``safe_ms`` (every write committed at or before it is
in this slice or an earlier one: the server's clock read before the read that found the oplog's
end, or the last entry's time), ``bytes``.

An *empty* slice (``<epoch>.<after ts>.hb<ms>``, no entries) is a heartbeat: it proves that
nothing happened from ``after`` up to ``safe_ms`` and so extends the recoverable window of an idle
database.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from drkit.errors import ChainBroken, ConfigError, LockedError
from drkit.repository import Repository, leases
from drkit.repository.manifest import LogRecord

from . import oplog as ol
from .connect import query_errors
from .options import MongoOptions

log = logging.getLogger(__name__)

SLICE_NAME_RE = r"^[0-9a-f]{10}\.\d{10}\.\d{10}(\.hb\d+)?$"


def slice_name(epoch: str, ts: tuple[int, int]) -> str:
    return f"{epoch}.{ts[0]:010d}.{ts[1]:010d}"


def is_slice(rec: LogRecord) -> bool:
    return "after" in rec.metadata and "last" in rec.metadata and "epoch" in rec.metadata


@dataclass
class Resume:
    """Where the next slice starts: a position and what it came from."""

    position: ol.Position | None  # None: from the oplog's beginning (a full of an empty oplog)
    origin: str  # "slice NAME" | "backup ID"


def resume_point(repo: Repository, source: str) -> Resume | None:
    """The newest captured position of ``source``: the newest slice's last entry, or the newest
    full backup's end position when that is newer; None without either."""
    best: Resume | None = None
    best_ts: tuple[int, int] = (-1, -1)
    for rec in repo.log_records(source):
        if not is_slice(rec):
            continue
        pos = ol.Position.from_dict(rec.metadata["last"])
        if pos.ts > best_ts or (pos.ts == best_ts and best is not None and best.origin.startswith("backup")):
            best, best_ts = Resume(pos, f"slice {rec.name}"), pos.ts
    for m in repo.list_manifests(source):
        if m.type != "full" or not m.metadata.get("oplog"):
            continue
        end = m.metadata.get("oplog_end")
        pos = ol.Position.from_dict(end) if end else None
        ts = pos.ts if pos else (0, 0)
        if ts > best_ts:
            best, best_ts = Resume(pos, f"backup {m.id}"), ts
    return best


@dataclass
class ShipReport:
    slices: int = 0
    entries: int = 0
    bytes: int = 0
    heartbeat: bool = False
    records: list[LogRecord] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"slices": self.slices, "entries": self.entries, "bytes": self.bytes, "heartbeat": self.heartbeat}


class SliceWriter:
    """Collects oplog entries after a position and seals them as slices (one-shot or follower).

    Entries are spooled (in memory up to 8 MiB, then in a temporary file) until :meth:`seal`
    stores them as one log record; the position advances only when a slice is committed, so a
    process killed in between loses nothing the repository holds, and its successor re-reads
    the unsealed entries from the oplog."""

    def __init__(self, repo: Repository, source: str, position: ol.Position | None, ident: ol.Identity,
                 max_bytes: int) -> None:
        self.repo, self.source = repo, source
        self.position = position
        self.ident = ident
        self.max_bytes = max_bytes
        self.report = ShipReport(records=[])
        self.last_safe_ms = position.wall_ms if position is not None else 0
        self._reset()

    def _reset(self) -> None:
        self._spool: Any = None
        self._first: ol.Position | None = None
        self._last: ol.Position | None = None
        self.pending_entries = 0
        self.pending_bytes = 0
        self.opened = time.monotonic()

    @property
    def newest(self) -> ol.Position | None:
        """The newest entry captured (sealed or pending)."""
        return self._last or self.position

    def add(self, raw: Any) -> bool:
        """Spool ``raw``; False when it was captured already (a re-read) and is skipped."""
        data = bytes(raw.raw)
        pos = ol.Position(ol.entry_ts(raw), ol.fingerprint(data), ol.entry_ms(raw))
        newest = self._last or self.position
        if newest is not None and pos.ts <= newest.ts:
            return False
        if self._spool is None:
            self._spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - closed in seal/discard
        self._spool.write(data)
        self._first = self._first or pos
        self._last = pos
        self.pending_entries += 1
        self.pending_bytes += len(data)
        return True

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._reset()

    def seal(self, safe_ms: int | None) -> LogRecord | None:
        """Commit the pending entries as one slice.  ``safe_ms``: every write up to that time is
        in (None: up to the last entry's time).  Nothing pending: a heartbeat record when
        ``safe_ms`` moves the safe time on, else nothing."""
        after = self.position
        try:
            if self._last is None:
                if after is None or safe_ms is None or safe_ms <= self.last_safe_ms:
                    return None
                name = f"{slice_name(self.ident.epoch, after.ts)}.hb{safe_ms}"
                meta = self._meta(after, after, 0, 0, after.wall_ms, after.wall_ms, safe_ms)
                _, rec = self.repo.put_log(self.source, name, io.BytesIO(b""), meta)
                self.report.heartbeat = True
                self.last_safe_ms = safe_ms
                assert self.report.records is not None
                self.report.records.append(rec)
                return rec
            assert self._first is not None and self._spool is not None
            self._spool.seek(0)
            safe = max(self._last.wall_ms, safe_ms or 0)
            meta = self._meta(after, self._last, self.pending_entries, self.pending_bytes, self._first.wall_ms,
                              self._last.wall_ms, safe)
            _, rec = self.repo.put_log(self.source, slice_name(self.ident.epoch, self._first.ts), self._spool, meta)
            self.position = self._last
            self.last_safe_ms = safe
            self.report.slices += 1
            self.report.entries += self.pending_entries
            self.report.bytes += self.pending_bytes
            assert self.report.records is not None
            self.report.records.append(rec)
            return rec
        finally:
            self.discard()

    def _meta(self, after: ol.Position | None, last: ol.Position, count: int, size: int, first_ms: int, last_ms: int,
              safe_ms: int) -> dict[str, Any]:
        return {"epoch": self.ident.epoch, "identity": self.ident.as_dict(),
                "after": after.as_dict() if after else None, "last": last.as_dict(), "entries": count,
                "bytes": size, "first_ms": first_ms, "last_ms": last_ms, "safe_ms": safe_ms}


def ship_once(repo: Repository, source: str, opts: MongoOptions, client: Any) -> ShipReport:
    """``backup --type incremental``: every oplog entry after the newest captured position up to
    the oplog's end as of now, in slices of at most ``slice_mib``."""
    held = leases.holder(repo, "follow", source)
    if held is not None:
        raise LockedError(f"'drkit mongodb follow {source}' is running ({held.describe()}, holding "
                          f"leases/follow/{source}): it ships the oplog continuously, so a one-shot incremental "
                          "is refused")
    with query_errors(opts):
        if not ol.has_oplog(client):
            raise ConfigError(f"MongoDB at {opts.url} has no oplog (a standalone server): incrementals need a "
                              "replica set (even of one member: start mongod with --replSet and run "
                              "rs.initiate()); full backups still work")
        resume = resume_point(repo, source)
        if resume is None:
            raise ChainBroken(f"source {source} has no full backup to continue from; take one first "
                              f"('drkit backup {source} --type full')")
        ident = ol.identity(client)
        if resume.position is not None:
            ol.check_position(client, resume.position, f"the newest captured position ({resume.origin})")
        now_ms = ol.server_now_ms(client)
        end = ol.newest(client)
        writer = SliceWriter(repo, source, resume.position, ident, opts.slice_mib << 20)
        if end is None or (resume.position is not None and ol.entry_ts(end) <= resume.position.ts):
            writer.seal(now_ms)
            return writer.report
        cursor = ol.read_after(client, resume.position.ts if resume.position else None, ol.entry_ts(end))
        try:
            for raw in cursor:
                writer.add(raw)
                if writer.pending_bytes >= writer.max_bytes:
                    writer.seal(None)
            # Everything up to the newest entry as of now_ms was read: the writes before it are in.
            writer.seal(now_ms)
        finally:
            cursor.close()
            writer.discard()
    log.info("source %s: %d oplog entries shipped in %d slice(s)", source, writer.report.entries,
             writer.report.slices)
    return writer.report
