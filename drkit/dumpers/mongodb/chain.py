"""Which times a MongoDB source can be restored to (pure: from manifests and log records).

*Slice chains*: slices linked by position -- a slice continues the one whose ``last`` position
(ts and fingerprint) is its ``after``.  A chain covers the oplog continuously from its first
slice's ``after`` to its last slice's ``last``; its times are safe up to the largest ``safe_ms``
of its slices and of the heartbeats recorded at its positions.

A full backup with an oplog is a ``backup`` restore point at ``consistent_at``; when a slice
chain of the same oplog covers the backup's end position, the backup plus the chain's slices
after that position are a ``range`` from ``consistent_at`` to the chain's safe time.

A chain whose first slice starts neither at a full backup's end position nor at another slice's
last position has a hole before it: the slices that would connect it are missing (a
:class:`~drkit.catalog.Gap` of the chain that ends before it), unless retention forgot them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drkit.catalog import Catalog, Gap, RestorePoint, RestorePoints, classify
from drkit.repository import Manifest
from drkit.repository.manifest import LogRecord, parse_iso

from .oplog import Position
from .slices import is_slice

_NAME = re.compile(r"^(?P<epoch>[0-9a-f]{10})\.(?P<s>\d{10})\.(?P<i>\d{10})(\.hb\d+)?$")


def dt_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def consistent_at(m: Manifest) -> datetime:
    ms = m.metadata.get("consistent_at_ms")
    return dt_ms(int(ms)) if ms is not None else parse_iso(m.finished)


def _pos(d: dict | None) -> Position | None:
    return Position.from_dict(d) if d else None


def _key(p: Position | None) -> tuple[tuple[int, int], str] | None:
    return (p.ts, p.fp) if p is not None else None


def _uuid(meta: dict) -> str:
    return str((meta.get("identity") or {}).get("oplog_uuid", ""))


@dataclass
class SliceChain:
    """Slices linked by position from ``origin`` (the first one's ``after``); a chain of
    heartbeats only (nothing happened after a full backup) has no slices."""

    origin: Position | None
    slices: list[LogRecord] = field(default_factory=list)
    heartbeats: list[LogRecord] = field(default_factory=list)

    @property
    def start(self) -> Position | None:
        return self.origin

    @property
    def last(self) -> Position:
        if self.slices:
            return Position.from_dict(self.slices[-1].metadata["last"])
        assert self.origin is not None
        return self.origin

    @property
    def records(self) -> list[LogRecord]:
        return self.slices or self.heartbeats

    @property
    def uuid(self) -> str:
        return _uuid(self.records[0].metadata)

    @property
    def name(self) -> str:
        return self.records[0].name

    @property
    def last_name(self) -> str:
        return self.records[-1].name

    def safe_ms(self) -> int:
        return max([int(s.metadata["safe_ms"]) for s in self.slices]
                   + [int(h.metadata["safe_ms"]) for h in self.heartbeats])

    def covers_position(self, p: Position | None) -> bool:
        start = self.start
        if p is None:
            return start is None
        if start is not None and _key(start) == _key(p):
            return True
        lo = start.ts if start is not None else (-1, -1)
        return lo < p.ts <= self.last.ts

    def after(self, p: Position | None) -> list[LogRecord]:
        """The slices holding entries after ``p``, and the heartbeats after it, in order."""
        ts = p.ts if p is not None else (-1, -1)
        out = [s for s in self.slices if Position.from_dict(s.metadata["last"]).ts > ts]
        return out + sorted((h for h in self.heartbeats if Position.from_dict(h.metadata["last"]).ts >= ts),
                            key=lambda h: int(h.metadata["safe_ms"]))


def build_chains(records: list[LogRecord]) -> list[SliceChain]:
    slices = [r for r in records if is_slice(r)]
    data = sorted((r for r in slices if int(r.metadata.get("entries", 0)) > 0),
                  key=lambda r: (tuple(r.metadata["last"]["ts"]), r.name))
    beats = [r for r in slices if int(r.metadata.get("entries", 0)) == 0]
    by_after: dict[object, list[LogRecord]] = {}
    ends = set()
    for r in data:
        by_after.setdefault(_key(_pos(r.metadata.get("after"))), []).append(r)
        ends.add(_key(_pos(r.metadata["last"])))
    chains: list[SliceChain] = []
    used: set[str] = set()
    for r in data:
        if r.name in used or _key(_pos(r.metadata.get("after"))) in ends:
            continue
        chain = SliceChain(_pos(r.metadata.get("after")), [r])
        used.add(r.name)
        while True:
            nxt = [s for s in by_after.get(_key(chain.last), []) if s.name not in used]
            if not nxt:
                break
            chain.slices.append(nxt[0])
            used.add(nxt[0].name)
        chains.append(chain)
    # A cycle-free remainder (a slice whose predecessor chain is also a successor) cannot happen
    # with positions strictly increasing; slices left over (duplicates) are ignored.
    for hb in beats:
        at = _key(_pos(hb.metadata.get("last")))
        for c in chains:
            if at == _key(c.start) or any(_key(_pos(s.metadata["last"])) == at for s in c.slices):
                c.heartbeats.append(hb)
                break
        else:
            chains.append(SliceChain(_pos(hb.metadata.get("last")), [], [hb]))
    return chains


@dataclass
class Plan:
    """What a restore of ``base`` reaches through ``chain`` (None: the backup alone)."""

    base: Manifest
    chain: SliceChain | None
    start: datetime
    end: datetime

    def slices_until(self, t: datetime) -> list[LogRecord]:
        """The slices a restore to ``t`` reads (their first entry at or before ``t``)."""
        if self.chain is None:
            return []
        ms = int(t.timestamp() * 1000)
        end = _pos(self.base.metadata.get("oplog_end"))
        return [s for s in self.chain.after(end) if int(s.metadata.get("entries", 0)) > 0
                and int(s.metadata["first_ms"]) <= ms]


def plans(manifests: list[Manifest], chains: list[SliceChain]) -> list[Plan]:
    out = []
    for m in manifests:
        if m.type != "full":
            continue
        at = consistent_at(m)
        if not m.metadata.get("oplog"):
            out.append(Plan(m, None, at, at))
            continue
        end = _pos(m.metadata.get("oplog_end"))
        uuid = _uuid(m.metadata)
        best: SliceChain | None = None
        for c in chains:
            if c.uuid == uuid and c.covers_position(end) and (best is None or c.safe_ms() > best.safe_ms()):
                best = c
        stop = max(at, dt_ms(best.safe_ms())) if best is not None else at
        out.append(Plan(m, best, at, stop))
    return out


def restore_points(catalog: Catalog) -> RestorePoints:
    chains = build_chains(catalog.logs)
    fulls = [m for m in catalog.manifests if m.type == "full"]
    points: list[RestorePoint] = []
    for p in plans(fulls, chains):
        points.append(RestorePoint("backup", p.start, p.start, p.base.id, [p.base.id]))
        if p.chain is not None and p.end > p.start:
            points.append(RestorePoint("range", p.start, p.end, p.base.id, [p.base.id],
                                       [s.name for s in p.chain.after(_pos(p.base.metadata.get("oplog_end")))]))
    gaps, notes = _holes(catalog, chains, fulls)
    notes = [f"backup manifest {d.key} is damaged ({d.error}): that backup cannot be restored; every other "
             "restore point is unaffected" for d in catalog.damaged if d.kind == "manifest"] + notes
    return RestorePoints(points, gaps, notes)


def _holes(catalog: Catalog, chains: list[SliceChain], fulls: list[Manifest]) -> tuple[list[Gap], list[str]]:
    full_ends = {_key(_pos(m.metadata.get("oplog_end"))) for m in fulls if m.metadata.get("oplog")}
    forgotten = [_NAME.match(n) for n in catalog.forgotten]
    gaps: list[Gap] = []
    notes: list[str] = []
    damaged = [(d, _NAME.match(d.name)) for d in catalog.damaged if d.kind == "log"]
    ends_of_fulls = [(m, _pos(m.metadata.get("oplog_end"))) for m in fulls if m.metadata.get("oplog")]
    for c in chains:
        start = c.start
        if start is None or _key(start) in full_ends or not c.slices:
            continue
        if any(_uuid(m.metadata) == c.uuid and c.covers_position(e) for m, e in ends_of_fulls):
            continue  # a full backup reaches into this chain: its newest state is reachable
        # What ends before it: earlier slice chains and full backups of the same oplog.
        before: list[tuple[tuple[int, int], str, datetime]] = [
            (o.last.ts, f"oplog slices ending {o.last_name}", dt_ms(o.safe_ms()))
            for o in chains if o is not c and o.uuid == c.uuid and o.last.ts < start.ts]
        before += [(e.ts, f"backup {m.id}", consistent_at(m)) for m, e in ends_of_fulls
                   if e is not None and _uuid(m.metadata) == c.uuid and e.ts < start.ts]
        reach = max((b[0] for b in before), default=(-1, -1))
        if any(f and start.ts >= (int(f["s"]), int(f["i"])) > reach for f in forgotten):
            continue  # retention removed the slices before it on purpose: a chain end, not a gap
        if not before:
            notes.append(f"oplog slices {c.name} .. {c.last_name} start at ts {start.ts[0]}:{start.ts[1]}, "
                         "after no full backup or earlier slice of this oplog: no restore can reach them")
            continue
        prev_ts, prev_name, prev_time = max(before, key=lambda b: b[0])
        hole = [d for d, m in damaged if m and prev_ts < (int(m["s"]), int(m["i"])) <= start.ts]
        pushed = [parse_iso(s.pushed) for s in c.slices if s.pushed]
        gaps.append(Gap(
            chain=prev_name,
            missing=f"the oplog entries after ts {prev_ts[0]}:{prev_ts[1]} up to ts {start.ts[0]}:{start.ts[1]}",
            after=prev_time, beyond=[s.name for s in c.slices],
            state=classify(pushed, catalog.now, catalog.gap_grace),
            damaged=hole[0] if len(hole) == 1 else None))
    # A damaged slice past everything readable was committed all the same: a latest restore that
    # stopped before it would quietly lack its operations.
    ends = [(c.last.ts, f"oplog slices ending {c.last_name}", dt_ms(c.safe_ms())) for c in chains]
    ends += [(tuple(m.metadata["oplog_end"]["ts"]), f"backup {m.id}", consistent_at(m)) for m in fulls
             if m.metadata.get("oplog") and m.metadata.get("oplog_end")]
    if ends:
        reach, name, when = max(ends, key=lambda e: e[0])
        for d, m in damaged:
            heartbeat = ".hb" in d.name  # holds no operation: losing it shortens the window only
            if m and not heartbeat and (int(m["s"]), int(m["i"])) >= reach and not any(g.damaged is d for g in gaps):
                gaps.append(Gap(chain=name, missing=d.name, after=when, beyond=[], state="gap", damaged=d,
                                lost=True))
    for d, _ in damaged:
        if not any(g.damaged is d for g in gaps):
            notes.append(f"log record {d.key} is damaged ({d.error}); a chain that needs it ends before it")
    return gaps, notes
