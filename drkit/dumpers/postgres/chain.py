"""Which times a PostgreSQL source can be restored to, and what a restore to T needs.

Pure logic over the repository's manifests (base backups) and WAL log records, so it is unit
tested without a server.  A base backup B is usable once every WAL segment from its start LSN to
its stop LSN is archived; from there the restore can replay every following segment that is
present without a gap on the timeline path PostgreSQL itself would follow (``latest``).
B covers ``[B.stop_time, last commit in its contiguous chain]``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drkit.catalog import Catalog, Gap, LogList, RestorePoint, RestorePoints, checked_index, classify
from drkit.errors import OutsideWindow
from drkit.repository import LogRecord, Manifest
from drkit.repository.manifest import parse_iso

from .walnames import HISTORY_RE, RECEIVED_RE, lsn_segno, parse_lsn, parse_segment, segment_name


@dataclass
class SegmentInfo:
    name: str
    tli: int
    segno: int
    first_commit: datetime | None
    last_commit: datetime | None
    times_known: bool = True
    closed_at: datetime | None = None  # the segment file's last write (it was complete then)
    pushed: datetime | None = None  # when its record was committed
    #: A sealed partial copy (``drkit pg receive``) standing in for a segment not archived
    #: complete (yet): replay ends inside it, so a run of segments ends with it.
    partial: bool = False


@dataclass
class BaseChain:
    backup: Manifest
    timeline_path: list[tuple[int, int]]  # (tli, first segno on it), ascending
    consistent: bool
    last_segno: int | None
    end: datetime  # last recoverable commit time (>= stop time)
    stop_time: datetime
    missing: str | None  # first segment absent after the chain (the gap), if known
    segments: Sequence[SegmentInfo] = field(default_factory=list)
    run: _Run | None = None  # the contiguous run of archived segments the chain replays
    first: int = 0  # index of the chain's first segment in ``run``


@dataclass
class Plan:
    backup: Manifest
    target: datetime | None  # None = replay the whole planned chain
    chain: BaseChain

    @property
    def last_segment(self) -> str | None:
        """The last WAL segment recovery may read: the end of the chain this plan was made on
        (a segment's name, also when the chain ends with a sealed partial copy of it)."""
        return self.chain.segments[-1].name[:24] if self.chain.segments else self.backup.metadata.get("stop_wal")

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


class _Run:
    """A maximal stretch of consecutive archived segments along one timeline path, shared by
    every chain that replays it (so 1,000 backups over 50,000 segments cost O(segments))."""

    def __init__(self, first_segno: int, segs: list[SegmentInfo], missing: str) -> None:
        self.first_segno = first_segno
        self.segs = segs
        self.missing = missing
        self.names = [x.name for x in segs]
        self.index = {n: k for k, n in enumerate(self.names)}
        # suffix maxima of last_commit: the newest commit from segment k to the run's end
        self.suffix_last: list[datetime | None] = [None] * (len(segs) + 1)
        for k in range(len(segs) - 1, -1, -1):
            a, b = segs[k].last_commit, self.suffix_last[k + 1]
            self.suffix_last[k] = a if b is None or (a is not None and a > b) else b

    @property
    def last_segno(self) -> int:
        return self.first_segno + len(self.segs) - 1


class _SegView(Sequence[SegmentInfo]):
    __slots__ = ("run", "start")

    def __init__(self, run: _Run, start: int) -> None:
        self.run, self.start = run, start

    def __len__(self) -> int:
        return len(self.run.segs) - self.start

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self.run.segs[self.start + checked_index(i, len(self))]

    def __iter__(self) -> Iterator[SegmentInfo]:
        segs = self.run.segs
        for k in range(self.start, len(segs)):
            yield segs[k]


def _segment_info(rec: LogRecord, parsed: tuple[int, int], partial: bool = False) -> SegmentInfo:
    md = rec.metadata
    return SegmentInfo(
        rec.name, parsed[0], parsed[1],
        parse_iso(md["first_commit"]) if md.get("first_commit") else None,
        parse_iso(md["last_commit"]) if md.get("last_commit") else None,
        bool(md.get("commit_times_ok", True)),
        parse_iso(md["closed_at"]) if md.get("closed_at") else None,
        parse_iso(rec.pushed) if rec.pushed else None,
        partial=partial,
    )


class WalCatalog:
    def __init__(self, records: list[LogRecord], seg_size: int = 16 * 1024 * 1024) -> None:
        self.seg_size = seg_size
        self.segments: dict[tuple[int, int], SegmentInfo] = {}
        self.histories: dict[int, list] = {}
        self._runs: dict[tuple, dict[int, _Run]] = {}  # path -> segno -> the run holding it
        for rec in records:
            parsed = parse_segment(rec.name, seg_size)
            if parsed:
                self.segments[parsed] = _segment_info(rec, parsed)
            elif HISTORY_RE.match(rec.name):
                self.histories[int(rec.name[:8], 16)] = rec.metadata.get("history", [])
        # Sealed partial copies, the newest of each segment, where no complete copy is archived.
        for rec in records:
            m = RECEIVED_RE.match(rec.name)
            parsed = parse_segment(m.group(1), seg_size) if m else None
            if not parsed or parsed in self.segments and not self.segments[parsed].partial:
                continue
            prev = self.segments.get(parsed)
            if prev is not None and prev.name > rec.name:
                continue
            self.segments[parsed] = _segment_info(rec, parsed, partial=True)

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
        run = self.run_from(path, segno)
        first = segno - run.first_segno
        segs = _SegView(run, first)
        last: int | None = run.last_segno if len(segs) else (stop_segno if included else None)
        if included and last is not None and last < stop_segno:
            last = stop_segno
        consistent = last is not None and last >= stop_segno
        end = stop_time
        # The newest commit from the stop segment on (suffix maximum over the shared run).
        k = max(first, stop_segno - run.first_segno)
        newest = run.suffix_last[k] if 0 <= k <= len(run.segs) else None
        if newest is not None and newest > end:
            end = newest
        # Newest safe time: every commit made before the last contiguous segment was complete is
        # in the chain, so an idle stretch after the last commit is restorable too.
        tail = run.segs[-1] if len(segs) else None
        if tail is not None and tail.closed_at and tail.segno >= stop_segno and tail.closed_at > end:
            end = tail.closed_at
        return BaseChain(backup, path, consistent, last, end, stop_time, run.missing, segs, run, first)

    def run_from(self, path: list[tuple[int, int]], segno: int) -> _Run:
        """The contiguous run of archived segments from ``segno`` along ``path`` (cached)."""
        cache = self._runs.setdefault(tuple(path), {})
        hit = cache.get(segno)
        if hit is not None:
            return hit
        segs: list[SegmentInfo] = []
        n = segno
        while True:
            cached = cache.get(n)
            if cached is not None:  # ran into a run computed earlier: join it (rare: see _analyse)
                segs.extend(cached.segs[n - cached.first_segno:])
                missing = cached.missing
                break
            t = self.tli_for(path, n)
            info = self.segments.get((t, n))
            if info is None:
                missing = segment_name(t, n, self.seg_size)
                break
            if not info.times_known:
                # Commit times unknown (pg_waldump could not decode it): the window cannot be
                # promised past this segment, so the chain is cut here.
                missing = f"{info.name} (commit times unknown)"
                break
            segs.append(info)
            if info.partial:  # replay ends inside it: the complete segment is what is missing
                missing = f"{segment_name(t, n, self.seg_size)} (only a partial copy is sealed)"
                break
            n += 1
        run = _Run(segno, segs, missing)
        for k in range(segno, segno + len(segs)):
            cache[k] = run
        if not segs:
            cache[segno] = run
        return run


def windows(backups: list[Manifest], records: list[LogRecord]) -> tuple[list[BaseChain], list[str]]:
    """Each usable base backup's chain, and notes about unusable ones."""
    chains, notes, _ = _analyse(backups, records)
    return chains, notes


def _analyse(backups: list[Manifest], records: list[LogRecord]) -> tuple[list[BaseChain], list[str], WalCatalog]:
    physical = [b for b in backups if b.type == "full" and "stop_lsn" in b.metadata]
    seg_size = _seg_size(physical[0]) if physical else 16 * 1024 * 1024
    for rec in records:
        if HISTORY_RE.match(rec.name) and "history" not in rec.metadata:
            rec.metadata["history"] = []
    cat = WalCatalog(records, seg_size)
    chains, notes = [], []
    per_tli: dict[int, list[int]] = {}
    for t, n in cat.segments:
        per_tli.setdefault(t, []).append(n)
    newest_on = {t: max(ns) for t, ns in per_tli.items()}
    # Oldest start first, so each later chain finds its run already computed (O(segments)).
    for b in sorted(physical, key=lambda m: parse_lsn(m.metadata["start_lsn"])):
        ch = cat.chain_for(b)
        for (parent, _), (child, begin) in zip(ch.timeline_path, ch.timeline_path[1:], strict=False):
            later = newest_on.get(parent, -1) > begin
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
            continue
        notes.append(
            f"backup {b.id} is not restorable: WAL segment {ch.missing} (needed to reach its "
            f"consistent point {b.metadata['stop_lsn']}) is not archived"
        )
    _extend_to_later_backups(chains, seg_size)
    chains.sort(key=lambda c: (c.stop_time, c.backup.id))
    return chains, notes, cat


def _extend_to_later_backups(chains: list[BaseChain], seg_size: int) -> None:
    """A chain that replays through a later backup's stop segment reaches that backup's stop
    time: every commit before it lies at or before its stop LSN.  (Without this an idle stretch
    between the last commit and a later backup showed as a false gap.)"""
    by_run: dict[int, list[BaseChain]] = {}
    for c in chains:
        if c.run is not None and len(c.segments):
            by_run.setdefault(id(c.run), []).append(c)
    for group in by_run.values():
        stops = sorted((lsn_segno(parse_lsn(o.backup.metadata["stop_lsn"]), seg_size), int(o.backup.metadata["timeline"]),
                        o.stop_time) for o in group)
        for c in group:
            first = c.run.first_segno + c.first
            reach = [t for segno, tli, t in stops if first <= segno <= c.run.last_segno
                     and c.run.segs[segno - c.run.first_segno].tli == tli]
            if reach and max(reach) > c.end:
                c.end = max(reach)


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


def restore_points(catalog: Catalog) -> RestorePoints:
    """The PostgreSQL dumper's restore points (pure; see :mod:`drkit.catalog`).

    Each usable base backup gives a ``backup`` point (its stop time; it needs the WAL from its
    start to its stop segment) and, when archived WAL continues past it, a ``range`` up to the
    newest safe time of its contiguous chain.  A segment missing (or damaged) with WAL archived
    after it is a :class:`Gap`; its ``beyond`` lists the archived segments that no restore
    point reaches.  Logical dumps are ``backup`` points outside the PITR window (``--backup``).
    """
    chains, notes, cat = _analyse(catalog.manifests, catalog.logs)
    for d in catalog.damaged:
        if d.kind == "manifest":
            notes.append(f"backup manifest {d.key} is damaged ({d.error}): that backup cannot be restored; "
                         "every other restore point is unaffected")
    points: list[RestorePoint] = []
    for m in catalog.manifests:
        if m.type == "logical":
            points.append(RestorePoint("backup", parse_iso(m.finished), parse_iso(m.finished), m.id, [m.id],
                                       window=False))
    for c in chains:
        stop_segno = lsn_segno(parse_lsn(c.backup.metadata["stop_lsn"]), cat.seg_size)
        histories = [f"{t:08X}.history" for t, _ in c.timeline_path[1:] if t in cat.histories]
        run = c.run
        if run is None or not len(c.segments):
            names = upto_stop = LogList()
        else:
            names = LogList(histories, run.names, c.first, len(run.segs), run.index)
            k = min(len(run.segs), max(c.first, stop_segno - run.first_segno + 1))
            upto_stop = LogList((), run.names, c.first, k, run.index)
        points.append(RestorePoint("backup", c.stop_time, c.stop_time, c.backup.id, [c.backup.id], upto_stop))
        if c.end > c.stop_time:
            points.append(RestorePoint("range", c.stop_time, c.end, c.backup.id, [c.backup.id], names))
    # Only WAL newer than everything some chain reaches is lost to a latest restore; an
    # unreached segment older than a later base is needed by no restore point.
    newest = max((x.last_segno for x in chains if x.last_segno is not None), default=-1)
    by_tli: dict[int, list[int]] = {}
    for t, n in cat.segments:
        by_tli.setdefault(t, []).append(n)
    for ns in by_tli.values():
        ns.sort()
    gaps = []
    seen_runs: set[int] = set()
    run_end: dict[int, datetime] = {}
    for c in chains:
        run_end[id(c.run)] = max(run_end.get(id(c.run), c.end), c.end)
    # A damaged WAL record is a segment that was archived: one past every chain's end holds
    # commits no restore point reaches, exactly like a committed segment past a hole.
    damaged_segs: dict[int, list[tuple[int, str]]] = {}
    for d in catalog.damaged:
        parsed = parse_segment(d.name, cat.seg_size) if d.kind == "log" else None
        if parsed:
            damaged_segs.setdefault(parsed[0], []).append((parsed[1], d.name))
    for c in chains:
        if c.missing is None or c.last_segno is None or id(c.run) in seen_runs:
            continue
        seen_runs.add(id(c.run))
        tlis = {t for t, _ in c.timeline_path}
        lost = sorted((n, name) for t in tlis for n, name in damaged_segs.get(t, []) if n > newest)
        if not lost and not any(bisect.bisect_right(by_tli.get(t, []), c.last_segno) < len(by_tli.get(t, []))
                                for t in tlis):
            continue  # the chain simply ends at the newest archived segment
        beyond = sorted((cat.segments[(t, n)] for t in tlis
                         for n in by_tli.get(t, [])[bisect.bisect_right(by_tli.get(t, []), newest):]),
                        key=lambda x: (x.segno, x.tli))
        missing_name = c.missing.split(" ")[0]
        if missing_name in catalog.forgotten:
            continue  # retention removed it on purpose: the chain ends there (no damage)
        beyond_names = sorted([x.name for x in beyond] + [name for _, name in lost if name != missing_name])
        gaps.append(Gap(
            chain=f"backup {c.backup.id}", missing=c.missing, after=run_end[id(c.run)], beyond=beyond_names,
            state=classify([x.pushed for x in beyond if x.pushed], catalog.now, catalog.gap_grace) if beyond else "gap",
            damaged=catalog.damaged_log(missing_name), lost=any(name == missing_name for _, name in lost)))
    # One hole cuts every chain that runs into it: name it once, with the newest point before it.
    merged: dict[str, Gap] = {}
    for g in gaps:
        prev = merged.get(g.missing)
        if prev is None or (g.after and prev.after and g.after > prev.after):
            merged[g.missing] = g
    return RestorePoints(points, list(merged.values()), notes)
