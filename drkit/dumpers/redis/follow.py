"""``drkit redis follow``: keep a replication link open and record the command stream in sealed slices.

The follower connects like a replica.  The first time (or when the primary cannot continue a
partial resync) it receives a full snapshot and commits it as the base of a new *chain*; then
it records every command the primary sends, each with its receipt time, and seals a slice into
the repository every ``slice_seconds``.  After a dropped link it reconnects with
``PSYNC <replid> <offset+1>``: ``+CONTINUE`` resumes the same chain with no gap; ``+FULLRESYNC``
ends the chain and starts a new one (said loudly, and recorded in the new base's metadata).

It acknowledges (``REPLCONF ACK``) only offsets that are sealed in the repository, so on the
primary ``WAIT 1 <ms>`` returns once a write is durable in the backup.

Slices are log records ``<chain>.<start offset, 20 digits>`` (see :mod:`.stream` for the frame
format) with metadata: chain, replid, start/end replication offsets, first/last receipt time,
command count, and ``caught_up_ms`` when the slice is the first after a (re)connect: receipt
times are only close to execution times once the backlog sent at connect has drained.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drkit.errors import DrkitError, SourceError
from drkit.repository import Manifest, Repository, leases
from drkit.repository.manifest import LogRecord, utcnow

from .full import ForkClock, commit_snapshot, server_facts
from .options import RedisOptions
from .replication import _RECV, FullSync, ReplicationLink
from .stream import frame

log = logging.getLogger(__name__)

MAX_SLICE_BYTES = 64 << 20
ACK_EVERY = 1.0
BACKOFF_MAX = 30.0
LEASE_MIN = 60.0  # seconds a dead follower's lease blocks another (3 slices if longer)


def chain_id(snapshot: datetime, replid: str, offset: int) -> str:
    return f"{snapshot.astimezone(UTC):%Y%m%dT%H%M%SZ}-{replid[:8]}-{offset}"


def slice_name(chain: str, start: int) -> str:
    return f"{chain}.{start:020d}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Position:
    chain: str
    replid: str
    offset: int  # last replication offset recorded


@dataclass
class FollowReport:
    chains_started: list[str] = field(default_factory=list)
    slices: int = 0
    commands: int = 0
    reconnects: int = 0
    partial_resyncs: int = 0
    full_resyncs: int = 0
    position: Position | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"chains_started": self.chains_started, "slices": self.slices, "commands": self.commands,
                "reconnects": self.reconnects, "partial_resyncs": self.partial_resyncs,
                "full_resyncs": self.full_resyncs,
                "position": self.position.__dict__ if self.position else None}


class _Slice:
    def __init__(self, start: int, caught_up_ms: int | None, session: int) -> None:
        self.start = self.end = start
        self.session = session
        self.buf = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - closed in seal/discard
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.commands = 0
        self.size = 0
        self.opened = time.monotonic()
        self.caught_up_ms = caught_up_ms

    def add(self, ts: int, raw: bytes) -> None:
        self.buf.write(frame(ts, raw))
        self.size += len(raw)
        self.end += len(raw)
        self.commands += 1
        self.first_ts = ts if self.first_ts is None else self.first_ts
        self.last_ts = ts


def chain_slices(records: list[LogRecord], chain: str) -> list[LogRecord]:
    return sorted((r for r in records if r.metadata.get("chain") == chain),
                  key=lambda r: int(r.metadata["start_offset"]))


def resume_position(repo: Repository, source: str) -> Position | None:
    """Where the newest chain of ``source`` ends (base offset, or the last sealed slice's end)."""
    bases = [m for m in repo.list_manifests(source) if m.metadata.get("method") == "follow"]
    if not bases:
        return None
    base = max(bases, key=lambda m: m.metadata["snapshot_time"])
    chain = base.metadata["chain"]
    names = [n for n in repo.list_log_names(source) if n.startswith(chain + ".")]
    if not names:
        return Position(chain, base.metadata["replid"], int(base.metadata["repl_offset"]))
    # A heartbeat (".hb" name, no commands) can sort after the slice that ends further on.
    last = max(repo.log_records(source, names), key=lambda r: (int(r.metadata["end_offset"]),
                                                              int(r.metadata["start_offset"])))
    return Position(chain, last.metadata["replid"], int(last.metadata["end_offset"]))


class Follower:
    def __init__(self, repo: Repository, source: str, opts: RedisOptions, *, slice_seconds: float | None = None,
                 stop: threading.Event | None = None) -> None:
        self.repo, self.source, self.opts = repo, source, opts
        self.slice_seconds = slice_seconds or opts.slice_seconds
        self.stop = stop or threading.Event()
        self.report = FollowReport()
        self.pos: Position | None = None
        self.sealed_offset = 0
        self.skew = 0

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> ReplicationLink:
        clock = ForkClock(self.opts)
        # Receipt times are stamped in the server's clock, like the snapshot's time.
        self.skew = clock.skew_ms()
        link = ReplicationLink(self.opts)
        self._clock = clock
        deadline = time.monotonic() + self.opts.sync_timeout
        try:
            if self.pos is not None:
                answer = link.psync(self.pos.replid, self.pos.offset + 1, deadline=deadline, on_fork=clock)
                if isinstance(answer, str):
                    log.info("partial resync: chain %s continues at offset %d", self.pos.chain, self.pos.offset + 1)
                    self.pos.replid = answer
                    self.report.partial_resyncs += 1
                    return link
                log.warning("FULL RESYNC: the primary could not continue chain %s at offset %d (backlog too "
                            "small for the time the link was down, or a different primary); that chain ends "
                            "there and a new chain starts from a new snapshot", self.pos.chain, self.pos.offset)
                self.report.full_resyncs += 1
                self._new_chain(link, answer, previous=self.pos.chain)
            else:
                self._new_chain(link, link.full_sync(rdb_only=False, deadline=deadline, on_fork=clock),
                                previous=None)
        except BaseException:
            link.close()
            raise
        finally:
            clock.close()
        return link

    def _new_chain(self, link: ReplicationLink, sync: FullSync, previous: str | None) -> Manifest:
        facts = server_facts(self.opts)
        started = utcnow()
        snapshot = self._clock.at
        assert snapshot is not None
        chain = chain_id(snapshot, sync.replid, sync.offset)
        meta: dict[str, Any] = {"method": "follow", "chain": chain, "replid": sync.replid,
                                "repl_offset": sync.offset, "diskless": sync.size is None}
        if sync.size is not None:
            meta["size"] = sync.size
        if previous:
            meta["previous_chain"] = previous
            meta["reason"] = "full resync: the primary refused to continue the previous chain"
        manifest = commit_snapshot(self.repo, self.source, link.snapshot(sync), meta, snapshot, facts, started)
        self.pos = Position(chain, sync.replid, sync.offset)
        self.sealed_offset = sync.offset
        self.report.chains_started.append(chain)
        log.info("chain %s: base snapshot committed as backup %s", chain, manifest.id)
        return manifest

    # -- slices ---------------------------------------------------------------------------------
    def _seal(self, sl: _Slice) -> None:
        assert self.pos is not None
        if sl.commands == 0:
            sl.buf.close()
            return
        sl.buf.seek(0)
        meta = {"chain": self.pos.chain, "replid": self.pos.replid, "start_offset": sl.start,
                "end_offset": sl.end, "first_ts_ms": sl.first_ts, "last_ts_ms": sl.last_ts,
                "commands": sl.commands, "bytes": sl.size, "caught_up_ms": sl.caught_up_ms,
                "session": sl.session}
        try:
            self.repo.put_log(self.source, slice_name(self.pos.chain, sl.start), sl.buf, meta)
        finally:
            sl.buf.close()
        self.sealed_offset = sl.end
        self.report.slices += 1
        self.report.commands += sl.commands

    def _heartbeat(self, sl: _Slice, ts: int) -> None:
        """On an idle link, prove that nothing was missed up to now and record it.

        If the server's replication offset equals ours, every write it executed before answering
        is in what we recorded: an empty record (``<chain>.<offset>.hb<ms>``) then extends the
        recoverable window to ``ts`` although no command arrived.  Without it the window of a
        quiet source would only advance with the primary's PINGs (repl-ping-replica-period).
        """
        assert self.pos is not None
        import redis

        try:
            with self.opts.client(socket_timeout=5) as c:
                info = c.info("replication")
        except redis.RedisError:
            return  # the link will tell us soon enough if something is wrong
        if int(info.get("master_repl_offset", -1)) != self.pos.offset:
            return
        meta = {"chain": self.pos.chain, "replid": self.pos.replid, "start_offset": self.pos.offset,
                "end_offset": self.pos.offset, "first_ts_ms": ts, "last_ts_ms": ts, "commands": 0, "bytes": 0,
                "caught_up_ms": sl.caught_up_ms, "session": sl.session, "heartbeat": True}
        self.repo.put_log(self.source, f"{slice_name(self.pos.chain, self.pos.offset)}.hb{ts}", io.BytesIO(b""),
                          meta)
        sl.caught_up_ms = None  # recorded in the heartbeat

    # -- main loop ------------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> FollowReport:
        version = server_facts(self.opts)["redis_version"] or "0"
        if int(version.split(".")[0]) < 7:
            raise SourceError(f"redis follow needs Redis >= 7.0 (it relies on expiries being replicated as "
                              f"absolute times); {self.opts.url} runs {version}. Take full backups instead.")
        # One follower per source: a second one is refused (exit 6) while this one's lease is live.
        with leases.Holding(self.repo, "follow", self.source, max(LEASE_MIN, 3 * self.slice_seconds),
                            f"'drkit redis follow {self.source}'") as self.hold:
            return self._run(duration)

    def _renew(self) -> None:
        self.hold.renew_if_due()

    def _run(self, duration: float | None) -> FollowReport:
        self.pos = resume_position(self.repo, self.source)
        if self.pos is not None:
            self.sealed_offset = self.pos.offset
        deadline = time.monotonic() + duration if duration else None
        backoff = 1.0
        while not self.stop.is_set():
            self._renew()
            try:
                link = self._connect()
            except SourceError as exc:
                if deadline and time.monotonic() > deadline:
                    raise
                log.warning("cannot (re)connect to %s: %s; retrying in %.0f s", self.opts.url, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = 1.0
            try:
                self._stream(link, deadline)
            except SourceError as exc:
                self.report.reconnects += 1
                log.warning("replication link to %s dropped (%s); reconnecting with PSYNC", self.opts.url, exc)
            finally:
                link.close()
            if deadline and time.monotonic() > deadline:
                break
        self.report.position = self.pos
        return self.report

    def _stream(self, link: ReplicationLink, deadline: float | None) -> None:
        assert self.pos is not None
        caught_up: int | None = None
        session = now_ms() + self.skew  # slices of one connection share it: their receipt times are comparable
        sl = _Slice(self.pos.offset, None, session)
        last_ack = 0.0
        try:
            while not self.stop.is_set() and not (deadline and time.monotonic() > deadline):
                got = link.poll(0.5)
                ts = now_ms() + self.skew
                while (raw := link.next_command()) is not None:
                    sl.add(ts, raw)
                    self.pos.offset += len(raw)
                    if raw.startswith(b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK"):
                        last_ack = 0.0  # answer at once (with what is sealed)
                if caught_up is None and (not got or link.last_recv < _RECV) and link.buffered() == 0:
                    caught_up = ts
                    sl.caught_up_ms = caught_up
                if time.monotonic() - sl.opened >= self.slice_seconds or sl.size >= MAX_SLICE_BYTES:
                    if sl.commands == 0 and caught_up is not None and link.buffered() == 0:
                        self._heartbeat(sl, ts)
                    self._seal(sl)
                    # An empty slice is not stored: its caught-up mark (unless a heartbeat took it)
                    # moves on to the next one.
                    sl = _Slice(self.pos.offset, sl.caught_up_ms if sl.commands == 0 else None, session)
                self._renew()
                if time.monotonic() - last_ack >= ACK_EVERY:
                    link.send("REPLCONF", "ACK", self.sealed_offset)
                    last_ack = time.monotonic()
        finally:
            # Whatever arrived is valid up to the last complete command: keep it.
            self._seal(sl)
            if sl.commands:
                try:
                    link.send("REPLCONF", "ACK", self.sealed_offset)
                except DrkitError:
                    pass


def install_stop_handlers(stop: threading.Event) -> None:
    from drkit.proc import install_stop_handlers as install

    install(stop)

