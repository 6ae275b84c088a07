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

from dataclasses import dataclass, field
from datetime import UTC, datetime

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
            chain.notes.append(f"chain {chain.name}: command slices missing between replication offsets "
                               f"{expect} and {start}; restore points after {expect} are not reachable")
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
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
