"""Which times a PostgreSQL source can be restored to, and what a restore to T needs.

Pure logic over the repository's manifests (base backups) and WAL log records, so it is unit
tested without a server.  A base backup B is usable once every WAL segment from its start LSN to
its stop LSN is archived; from there the restore can replay every following segment that is
present without a gap on the timeline path PostgreSQL itself would follow (``latest``).
B covers ``[B.stop_time, last commit in its contiguous chain]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from drkit.errors import OutsideWindow
from drkit.repository import LogRecord, Manifest
from drkit.repository.manifest import parse_iso

from .walnames import HISTORY_RE, lsn_segno, parse_lsn, parse_segment, segment_name


@dataclass
class SegmentInfo:
    name: str
    tli: int
    segno: int
    first_commit: datetime | None
    last_commit: datetime | None
    times_known: bool = True


@dataclass
class BaseChain:
    backup: Manifest
    timeline_path: list[tuple[int, int]]  # (tli, first segno on it), ascending
    consistent: bool
    last_segno: int | None
    end: datetime  # last recoverable commit time (>= stop time)
    stop_time: datetime
    missing: str | None  # first segment absent after the chain (the gap), if known
    segments: list[SegmentInfo] = field(default_factory=list)


@dataclass
class Plan:
    backup: Manifest
    target: datetime | None  # None = replay the whole planned chain
    chain: BaseChain

    @property
    def last_segment(self) -> str | None:
        """The last WAL segment recovery may read: the end of the chain this plan was made on."""
        return self.chain.segments[-1].name if self.chain.segments else self.backup.metadata.get("stop_wal")

    @property
    def timeline(self) -> int:
        return self.chain.timeline_path[-1][0]

    def min_replay_segno(self) -> int | None:
        """Recovery must replay at least through this segment (the last commit at or before T)."""
        segs = self.chain.segments
        if not segs:
            return None
        if self.target is None:
            return segs[-1].segno
        before = [s.segno for s in segs if s.first_commit and s.first_commit <= self.target]
        return max(before) if before else None


def _seg_size(manifest: Manifest) -> int:
    return int(manifest.metadata.get("segment_size", 16 * 1024 * 1024))


class WalCatalog:
    def __init__(self, records: list[LogRecord], seg_size: int = 16 * 1024 * 1024) -> None:
        self.seg_size = seg_size
        self.segments: dict[tuple[int, int], SegmentInfo] = {}
        self.histories: dict[int, list] = {}
        for rec in records:
            parsed = parse_segment(rec.name, seg_size)
            if parsed:
                md = rec.metadata
                self.segments[parsed] = SegmentInfo(
                    rec.name, parsed[0], parsed[1],
                    parse_iso(md["first_commit"]) if md.get("first_commit") else None,
                    parse_iso(md["last_commit"]) if md.get("last_commit") else None,
                    bool(md.get("commit_times_ok", True)),
                )
            elif HISTORY_RE.match(rec.name):
                self.histories[int(rec.name[:8], 16)] = rec.metadata.get("history", [])

    def timeline_path(self, base_tli: int, base_stop_lsn: int) -> list[tuple[int, int]]:
        """The ancestry PostgreSQL follows with recovery_target_timeline='latest'."""
        best = [(base_tli, 0)]
        for tli, entries in sorted(self.histories.items()):
            if tli <= base_tli:
                continue
            hist = [(int(e[0]), int(e[1])) for e in entries]  # (parent, switch lsn)
            parents = [p for p, _ in hist]
            if base_tli not in parents:
                continue
            switch_from_base = next(lsn for p, lsn in hist if p == base_tli)
            if switch_from_base < base_stop_lsn:
                continue  # branched before the backup was consistent
            path = []
            begin = 0
            for parent, lsn in hist:
                if parent >= base_tli:
                    path.append((parent, lsn_segno(begin, self.seg_size) if begin else 0))
                begin = lsn
            path.append((tli, lsn_segno(begin, self.seg_size)))
            best = path
        return best

    @staticmethod
    def tli_for(path: list[tuple[int, int]], segno: int) -> int:
        tli = path[0][0]
        for t, begin in path:
            if begin <= segno:
                tli = t
        return tli

    def chain_for(self, backup: Manifest) -> BaseChain:
        md = backup.metadata
        start_lsn, stop_lsn = parse_lsn(md["start_lsn"]), parse_lsn(md["stop_lsn"])
        tli = int(md["timeline"])
        stop_time = parse_iso(md["stop_time"])
        path = self.timeline_path(tli, stop_lsn)
        stop_segno = lsn_segno(stop_lsn, self.seg_size)
        # A backup that carries its own WAL (pg_basebackup -X fetch) is consistent by itself;
        # the chain after it starts with the segment after its stop point.  A backup taken from
        # a standby carries only a partial copy of its stop segment: continuing past it needs
        # the archived (complete) stop segment.
        included = bool(md.get("wal_included")) and not md.get("from_standby")
        if md.get("wal_included") and md.get("from_standby"):
            segno = stop_segno
        else:
            segno = stop_segno + 1 if included else lsn_segno(start_lsn, self.seg_size)
        segs: list[SegmentInfo] = []
        last = stop_segno if included else None
        while True:
            t = self.tli_for(path, segno)
            info = self.segments.get((t, segno))
            if info is None:
                missing = segment_name(t, segno, self.seg_size)
                break
            if not info.times_known:
                # Commit times unknown (pg_waldump could not decode it): the window cannot be
                # promised past this segment, so the chain is cut here.
                missing = f"{info.name} (commit times unknown)"
                break
            segs.append(info)
            last = segno
            segno += 1
        consistent = last is not None and last >= stop_segno
        end = stop_time
        for s in segs:
            if s.last_commit and s.last_commit > end and s.segno > stop_segno - 1:
                end = s.last_commit
        return BaseChain(backup, path, consistent, last, end, stop_time, missing, segs)


def windows(backups: list[Manifest], records: list[LogRecord]) -> tuple[list[BaseChain], list[str]]:
    """Each usable base backup's chain, and notes about unusable ones."""
    physical = [b for b in backups if b.type == "full" and "stop_lsn" in b.metadata]
    seg_size = _seg_size(physical[0]) if physical else 16 * 1024 * 1024
    for rec in records:
        if HISTORY_RE.match(rec.name) and "history" not in rec.metadata:
            rec.metadata["history"] = []
    cat = WalCatalog(records, seg_size)
    chains, notes = [], []
    for b in physical:
        ch = cat.chain_for(b)
        for (parent, _), (child, begin) in zip(ch.timeline_path, ch.timeline_path[1:], strict=False):
            later = [n for (t, n) in cat.segments if t == parent and n > begin]
            note = (
                f"timeline {parent} has WAL after timeline {child} branched from it (segment "
                f"{segment_name(parent, begin, seg_size)}): the original cluster kept running after a "
                f"failover or a restore with --keep-archiving archived into this source; restores "
                f"follow timeline {child}"
            )
            if later and note not in notes:
                notes.append(note)
        if ch.consistent:
            chains.append(ch)
        else:
            notes.append(
                f"backup {b.id} is not restorable: WAL segment {ch.missing} (needed to reach its "
                f"consistent point {b.metadata['stop_lsn']}) is not archived"
            )
    return chains, notes


def merged_intervals(chains: list[BaseChain]) -> list[tuple[datetime, datetime]]:
    spans = sorted((c.stop_time, c.end) for c in chains)
    merged: list[tuple[datetime, datetime]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def plan_restore(chains: list[BaseChain], target: datetime | None, source: str) -> Plan:
    """Pick the newest base whose chain covers ``target`` (None = the latest recoverable time)."""
    if not chains:
        raise OutsideWindow(f"source {source} has no restorable base backup")
    if target is None:
        best = max(chains, key=lambda c: (c.end, c.stop_time))
        return Plan(best.backup, None, best)
    covering = [c for c in chains if c.stop_time <= target <= c.end]
    if not covering:
        spans = ", ".join(f"{a.isoformat()} .. {b.isoformat()}" for a, b in merged_intervals(chains))
        gap = ""
        before = [c for c in chains if c.stop_time <= target]
        if before:
            c = max(before, key=lambda c: c.end)
            gap = (
                f"; the WAL chain from backup {c.backup.id} ends at {c.end.isoformat()} "
                f"because segment {c.missing} is not archived (yet)"
            )
        raise OutsideWindow(
            f"{target.isoformat()} is outside the recoverable window of source {source}: {spans}{gap}"
        )
    best = max(covering, key=lambda c: c.stop_time)
    last_commit = max((s.last_commit for s in best.segments if s.last_commit), default=None)
    if last_commit is None or target >= last_commit:
        return Plan(best.backup, None, best)  # nothing committed after T in the archive
    return Plan(best.backup, target, best)
