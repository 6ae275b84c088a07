"""Which times a Redis source can be restored to, and how: snapshots plus followed command slices.

A plain snapshot (``backup --type full``) restores to its own time only.  A *chain* is a base
snapshot taken by ``drkit redis follow`` plus its slices, contiguous in replication offsets from
the base's offset -- or, in node-local AOF mode, an AOF BASE plus the incrementals that shipped its
INCR bytes (offsets count the bytes shipped; their times are the server's ``#TS`` annotations, so
the whole chain is one interval, see :mod:`.aofbackup`).  Within one follower connection ("session"), receipt times are accurate once
the backlog sent at connect has drained (``caught_up_ms``), so a session contributes the
interval [caught up, last receipt]; between sessions (the follower was down, then resumed with
PSYNC) the commands are all there but their times are not, so that stretch is a gap in the
window -- although later times are still reachable through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drkit.catalog import Catalog, Gap, RestorePoint, RestorePoints, classify, merge_intervals
from drkit.repository import Manifest
from drkit.repository.manifest import LogRecord, parse_iso


def snapshot_time(m: Manifest) -> datetime:
    return parse_iso(m.metadata.get("snapshot_time") or m.finished)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class Chain:
    base: Manifest
    slices: list[LogRecord] = field(default_factory=list)
    intervals: list[tuple[datetime, datetime]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hole: tuple[int, int] | None = None  # (expected offset, next present offset) where pieces are missing
    unreached: list[LogRecord] = field(default_factory=list)  # pieces past the hole

    @property
    def aof(self) -> bool:
        """A node-local AOF chain (1 s resolution; see :mod:`.aof`)."""
        return self.base.metadata.get("method") == "aof-rewrite"

    @property
    def name(self) -> str:
        return str(self.base.metadata.get("chain") or self.base.id)

    def covers(self, t: datetime) -> bool:
        return any(a <= t <= b for a, b in self.intervals)

    def slices_until(self, t: datetime) -> list[LogRecord]:
        ms = int(t.timestamp() * 1000)
        return [s for s in self.slices if (s.metadata.get("first_ts_ms") or 0) <= ms]


def build_chains(manifests: list[Manifest], records: list[LogRecord]) -> list[Chain]:
    """Chains from full manifests plus their pieces: follower slices (log records) and AOF
    incrementals (manifests of type ``incremental``, one stream each)."""
    by_chain: dict[str, list[LogRecord]] = {}
    pieces = list(records) + [LogRecord(m.source, m.id, m.streams[0], m.metadata) for m in manifests
                              if m.type == "incremental" and m.metadata.get("chain") and m.streams]
    for r in pieces:
        if r.metadata.get("chain"):
            by_chain.setdefault(r.metadata["chain"], []).append(r)
    chains = []
    for m in sorted((m for m in manifests if m.type == "full"), key=snapshot_time):
        snap = snapshot_time(m)
        chain = Chain(m, intervals=[(snap, snap)])
        name = m.metadata.get("chain")
        if name:
            _attach(chain, sorted(by_chain.get(name, []), key=lambda r: (int(r.metadata["start_offset"]),
                                                                          int(r.metadata["end_offset"]))))
        chains.append(chain)
    return chains


def _attach(chain: Chain, slices: list[LogRecord]) -> None:
    expect = int(chain.base.metadata["repl_offset"])
    sessions: dict[int, list[int | None]] = {}  # session -> [caught_up, last_ts]
    order: list[int] = []
    for s in slices:
        start, end = int(s.metadata["start_offset"]), int(s.metadata["end_offset"])
        if start != expect:
            chain.hole = (expect, start)
            chain.unreached = slices[slices.index(s):]
            break
        chain.slices.append(s)
        expect = end
        sid = int(s.metadata.get("session") or 0)
        if sid not in sessions:
            sessions[sid] = [None, None]
            order.append(sid)
        sess = sessions[sid]
        if s.metadata.get("caught_up_ms") and sess[0] is None:
            sess[0] = int(s.metadata["caught_up_ms"])
        sess[1] = int(s.metadata["last_ts_ms"])
    for sid in order:
        caught, last = sessions[sid]
        if caught is not None and last is not None and last >= caught:
            chain.intervals.append((_dt(caught), _dt(last)))
    chain.intervals = merge(chain.intervals)


def merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    return merge_intervals(intervals)


def restore_points(catalog: Catalog) -> RestorePoints:
    """The Redis dumper's restore points (pure; see :mod:`drkit.catalog`): each snapshot is a
    ``backup`` point; each interval its chain's pieces cover is a ``range`` needing the base and
    every piece up to the interval's end.  Pieces missing between offsets with pieces committed
    after them are a :class:`Gap`."""
    chains = build_chains(catalog.manifests, catalog.logs)
    manifest_ids = {m.id for m in catalog.manifests}
    points: list[RestorePoint] = []
    gaps: list[Gap] = []
    notes = [f"backup manifest {d.key} is damaged ({d.error}): that backup cannot be restored; every other "
             "restore point is unaffected" for d in catalog.damaged if d.kind == "manifest"]
    for c in chains:
        snap = snapshot_time(c.base)
        points.append(RestorePoint("backup", snap, snap, c.base.id, [c.base.id]))
        for a, b in c.intervals:
            if b <= snap:
                continue
            ms = int(b.timestamp() * 1000)
            used = [sl for sl in c.slices if int(sl.metadata.get("first_ts_ms") or 0) <= ms]
            points.append(RestorePoint(
                "range", max(a, snap), b, c.base.id,
                [c.base.id] + [sl.name for sl in used if sl.name in manifest_ids],
                [sl.name for sl in used if sl.name not in manifest_ids]))
        if c.hole is not None:
            expect, start = c.hole
            pushed = [parse_iso(sl.pushed) for sl in c.unreached if sl.pushed and sl.name not in manifest_ids]
            damaged = [d for d in catalog.damaged if d.kind == "log"]
            gaps.append(Gap(
                chain=f"chain {c.name} (base {c.base.id})",
                missing=f"the pieces between replication offsets {expect} and {start}",
                after=c.intervals[-1][1], beyond=[sl.name for sl in c.unreached],
                state=classify(pushed, catalog.now, catalog.gap_grace),
                damaged=damaged[0] if len(damaged) == 1 else None))
        elif c.name:
            # A damaged slice of this chain past its last readable one: it was committed, so a
            # latest restore that stopped before it would quietly lack its commands.
            reached = int(c.slices[-1].metadata["end_offset"]) if c.slices else int(c.base.metadata["repl_offset"])
            for d in catalog.damaged:
                m = re.fullmatch(re.escape(c.name) + r"\.(\d{20})", d.name) if d.kind == "log" else None
                if m and int(m.group(1)) >= reached:
                    gaps.append(Gap(chain=f"chain {c.name} (base {c.base.id})", missing=d.name,
                                    after=c.intervals[-1][1], beyond=[], state="gap", damaged=d, lost=True))
                    break
    for d in catalog.damaged:
        if d.kind == "log" and not any(g.damaged is d for g in gaps):
            notes.append(f"log record {d.key} is damaged ({d.error}); a chain that needs it ends before it")
    return RestorePoints(points, gaps, notes)
