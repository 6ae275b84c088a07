"""``drkit mongodb follow SOURCE``: tail the oplog and seal a slice every N seconds or N MiB.

The follower continues from the newest captured position in the repository (the newest slice's
last entry, or the newest full backup's end position), checked against the oplog first (see
:mod:`.oplog`: a rolled-over oplog is a broken chain and the follower refuses, asking for a full
backup).  It reads with a tailable, awaiting cursor and seals what it has every
``slice_seconds`` (default 60) or ``slice_mib``; an idle oplog gets a heartbeat record instead,
so the newest safe time keeps moving.  Only sealed slices move the position, so after a SIGKILL,
a dropped connection or a server restart the next run (or reconnect) re-reads the unsealed
entries from the oplog: no gap, no duplicate.

One follower per source: it holds ``leases/follow/<source>`` (a second follower and a one-shot
incremental are refused with exit 6 while it lives).  SIGTERM/SIGINT seal the open slice and
exit 0.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from drkit.errors import ChainBroken, ConfigError, SourceError
from drkit.repository import Repository, leases

from . import oplog as ol
from .connect import query_errors, source_client
from .options import MongoOptions
from .slices import SliceWriter, resume_point

log = logging.getLogger(__name__)

LEASE_MIN = 60.0
BACKOFF_MAX = 30.0
AWAIT_MS = 500


@dataclass
class FollowReport:
    slices: int = 0
    entries: int = 0
    heartbeats: int = 0
    reconnects: int = 0
    position: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Follower:
    def __init__(self, repo: Repository, source: str, opts: MongoOptions, *, slice_seconds: float | None = None,
                 slice_mib: int | None = None, stop: threading.Event | None = None) -> None:
        self.repo, self.source, self.opts = repo, source, opts
        self.slice_seconds = slice_seconds or opts.slice_seconds
        self.max_bytes = (slice_mib or opts.slice_mib) << 20
        self.stop = stop or threading.Event()
        self.report = FollowReport()

    def run(self, duration: float | None = None) -> FollowReport:
        with leases.Holding(self.repo, "follow", self.source, max(LEASE_MIN, 3 * self.slice_seconds),
                            f"'drkit mongodb follow {self.source}'") as self.hold:
            return self._run(duration)

    def _renew(self) -> None:
        self.hold.renew_if_due()

    def _run(self, duration: float | None) -> FollowReport:
        deadline = time.monotonic() + duration if duration else None
        backoff = 1.0
        while not self.stop.is_set() and not (deadline and time.monotonic() > deadline):
            self._renew()
            try:
                with query_errors(self.opts), source_client(self.opts) as (client, _member):
                    self._follow(client, deadline)
                backoff = 1.0
            except ChainBroken:
                raise
            except SourceError as exc:
                self.report.reconnects += 1
                self.report.errors.append(str(exc))
                log.warning("following %s: %s; reconnecting in %.0f s (the open slice is re-read from the oplog)",
                            self.opts.url, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        return self.report

    def _follow(self, client: Any, deadline: float | None) -> None:
        if not ol.has_oplog(client):
            raise ConfigError(f"MongoDB at {self.opts.url} has no oplog (a standalone server): there is nothing to "
                             "follow; run it as a replica set (even of one member), or take full backups only")
        resume = resume_point(self.repo, self.source)
        if resume is None:
            raise ChainBroken(f"source {self.source} has no full backup to continue from; take one first "
                              f"('drkit backup {self.source} --type full')")
        if resume.position is not None:
            ol.check_position(client, resume.position, f"the newest captured position ({resume.origin})")
        writer = SliceWriter(self.repo, self.source, resume.position, ol.identity(client), self.max_bytes)
        log.info("following %s from %s", self.opts.url, resume.origin)
        cursor: Any = None
        try:
            while not self.stop.is_set() and not (deadline and time.monotonic() > deadline):
                if cursor is None or not cursor.alive:
                    # Some servers (the test server) end a tailable cursor after an empty wait:
                    # open a new one from the newest entry read.
                    if cursor is not None:
                        cursor.close()
                        self.stop.wait(0.1)
                    cursor = self._tail(client, writer)
                raw = _try_next(cursor)
                if raw is not None and not writer.add(raw):
                    raw = None  # the re-read newest entry a new cursor starts with: nothing new
                if writer.pending_bytes >= writer.max_bytes:
                    self._seal(writer, None, client)
                elif time.monotonic() - writer.opened >= self.slice_seconds:
                    # Idle now: the safe time reaches the clock; busy: the last entry's time.
                    self._seal(writer, self._idle_safe(client, writer) if raw is None else None, client)
                self._renew()
            self._seal(writer, self._idle_safe(client, writer), client)
        finally:
            if cursor is not None:
                cursor.close()
            writer.discard()
            self.report.slices += writer.report.slices
            self.report.entries += writer.report.entries
            self.report.position = writer.position.as_dict() if writer.position else None

    @staticmethod
    def _tail(client: Any, writer: SliceWriter) -> Any:
        from pymongo import CursorType

        newest = writer.newest
        # From the newest entry itself (the writer skips it): a tailable cursor whose first batch
        # is empty is dead at once, so an idle oplog could not be tailed from past its end.
        query = {"ts": {"$gte": newest.bson_ts()}} if newest is not None else {}
        return ol.oplog(client).find(query, cursor_type=CursorType.TAILABLE_AWAIT,
                                     batch_size=1000).max_await_time_ms(AWAIT_MS)

    @staticmethod
    def _idle_safe(client: Any, writer: SliceWriter) -> int | None:
        """The server time up to which every write is in (or pending in ``writer``): read the
        clock, then check with a fresh query that the oplog holds nothing past what was read."""
        try:
            now = ol.server_now_ms(client)
            newest = writer.newest
            more = False
            for raw in ol.read_after(client, newest.ts if newest else None):
                more = writer.add(raw) or more
        except Exception:  # noqa: BLE001 - the seal goes on without extending the safe time
            return None
        return None if more else now

    def _seal(self, writer: SliceWriter, safe_ms: int | None, client: Any = None) -> None:
        if client is not None and ol.identity(client).epoch != writer.ident.epoch:
            # The server restarted (its ts counter may have too) or was replaced under a live
            # connection: seal nothing of this run's spool, start over from the sealed position
            # (checked against the oplog again) under the new epoch.
            writer.discard()
            raise SourceError(f"the server at {self.opts.url} restarted or changed")
        had = writer.pending_entries
        rec = writer.seal(safe_ms)
        if rec is not None and not had:
            self.report.heartbeats += 1


def _try_next(cursor: Any) -> Any | None:
    """The next entry of a tailable cursor, or None when none arrived within the await time."""
    if not cursor.alive:
        return None
    try:
        return cursor.next()
    except StopIteration:
        return None
