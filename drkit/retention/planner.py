"""The retention planner: which manifests and log records a policy keeps, and why.  Pure (no I/O).

It works on restore points (:class:`drkit.catalog.RestorePoints`, the dumper's pure function) and
never on a datastore's own notions, so it serves every dumper alike:

- a *full* is a ``backup`` restore point that needs exactly one manifest (its own); a restore
  point needing several manifests is *incremental*, its parents being the other manifests it
  needs (listed before it: the base first);
- the latest state (the point reaching the newest restorable time) is always kept, and so is the
  newest full;
- the policy chooses restore points (``keep_last``, the GFS buckets, ``keep_within`` and
  ``min_fulls`` over fulls by their end time in UTC; ``keep_within_incremental`` over incremental
  points; ``pitr_window`` the fewest points covering every restorable time in
  [now - window, now]); the newest full is always chosen;
- the objects kept are exactly what the chosen points need, plus anything younger than ``grace``
  (a manifest by ``finished``, a log record by ``pushed``) and anything a read lease protects,
  each with the smallest restore point that makes it usable;
- everything else is removed, "no kept restore point needs it".  Objects the catalog could not
  read (damaged) are not in the input, so they are never removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drkit.catalog import RestorePoint, RestorePoints, merge_intervals
from drkit.repository import LogRecord, Manifest
from drkit.repository.manifest import iso, parse_iso
from drkit.retention.policy import RetentionPolicy

UNNEEDED = "no kept restore point needs it"

Interval = tuple[datetime, datetime]


@dataclass
class Plan:
    """What ``forget`` keeps and removes for one source, each object with its reasons."""

    keep_manifests: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons
    keep_logs: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons
    remove_manifests: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), deletion order
    remove_logs: list[tuple[str, str]] = field(default_factory=list)  # (name, reason), oldest first
    kept_points: list[tuple[RestorePoint, list[str]]] = field(default_factory=list)
    unreachable: list[Interval] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        names = [n for n, _ in self.remove_logs]
        return {
            "remove": {
                "manifests": [{"id": i, "reason": r} for i, r in self.remove_manifests],
                "logs": {"count": len(names), "first": names[0] if names else None,
                         "last": names[-1] if names else None, "names": names,
                         "reason": UNNEEDED if names else None},
            },
            "keep": {
                "manifests": [{"id": i, "reasons": r} for i, r in self.keep_manifests.items()],
                "logs": {"count": len(self.keep_logs), "first": next(iter(self.keep_logs), None),
                         "last": next(reversed(self.keep_logs), None) if self.keep_logs else None},
                "restore_points": [{**p.as_dict(), "reasons": r} for p, r in self.kept_points],
            },
            "unreachable": [{"start": iso(a), "end": iso(b)} for a, b in self.unreachable],
            "notes": list(self.notes),
        }


def is_full(p: RestorePoint) -> bool:
    return p.kind == "backup" and len(p.manifests) == 1


def is_incremental(p: RestorePoint) -> bool:
    return len(p.manifests) > 1


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "keep_hourly": lambda t: (_utc(t).year, _utc(t).month, _utc(t).day, _utc(t).hour),
    "keep_daily": lambda t: (_utc(t).year, _utc(t).month, _utc(t).day),
    "keep_weekly": lambda t: tuple(_utc(t).isocalendar()[:2]),
    "keep_monthly": lambda t: (_utc(t).year, _utc(t).month),
    "keep_yearly": lambda t: (_utc(t).year,),
}


def gfs(times: list[datetime], rule: str, n: int) -> list[int]:
    """Indexes into ``times`` (sorted newest first) that the bucket ``rule`` keeps with count
    ``n``: the newest of each of the ``n`` newest buckets (hour, day, ISO week, month, year in
    UTC) that hold one (restic's rule)."""
    bucket = BUCKETS[rule]
    out: list[int] = []
    last: tuple[int, ...] | None = None
    for i, t in enumerate(times):
        if len(out) >= n:
            break
        key = bucket(t)
        if key != last:
            out.append(i)
            last = key
    return out


def cover(points: list[RestorePoint], lo: datetime, hi: datetime, intervals: list[Interval]) -> list[RestorePoint]:
    """Few points whose union covers every restorable time in [lo, hi]: from the left, the point
    covering the current time that reaches furthest (on a tie the newest base: the least to keep)."""
    chosen: list[RestorePoint] = []
    cands = [p for p in points if p.window]
    for a, b in intervals:
        a, b = max(a, lo), min(b, hi)
        if a > b:
            continue
        t = a
        while True:
            covering = [p for p in cands if p.start <= t <= p.end]
            if not covering:
                break  # cannot happen for a time inside the union of the points
            best = max(covering, key=lambda p: (p.end, p.start, len(p.manifests) == 1))
            if best not in chosen:
                chosen.append(best)
            if best.end >= b:
                break
            t = best.end
            further = [p for p in cands if p.start <= t < p.end]
            if not further:  # the next part of the union starts after a touching point
                nxt = [p.start for p in cands if t < p.start <= b]
                if not nxt:
                    break
                t = min(nxt)
    return chosen


def subtract(before: list[Interval], after: list[Interval]) -> list[Interval]:
    """The parts of ``before`` (merged, sorted) not in ``after`` (merged, sorted); a lost single
    instant is reported as an interval with start = end."""
    out: list[Interval] = []
    for a, b in before:
        cur, done = a, False
        for c, d in after:
            if d < cur:
                continue
            if c > b:
                break
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
            if cur >= b:
                done = True
                break
        if not done:
            out.append((cur, b))
    return out


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    return merge_intervals(intervals)


def _label(p: RestorePoint) -> str:
    return f"{p.kind} point {p.describe()}"


def plan(points: RestorePoints, manifests: list[Manifest], logs: list[LogRecord], policy: RetentionPolicy,
         now: datetime, grace: timedelta, protected: tuple[set[str], set[str]] = (set(), set())) -> Plan:
    """Decide what ``policy`` keeps of one source's ``manifests`` and ``logs`` (see the module
    docstring).  ``points`` are the dumper's restore points over exactly these objects; ``now``
    is the storage's clock; ``protected`` is (manifest ids, log names) that read leases name."""
    pts = points.points
    chosen: dict[int, list[str]] = {}  # id(point) -> reasons

    def choose(p: RestorePoint, reason: str) -> None:
        chosen.setdefault(id(p), [])
        if reason not in chosen[id(p)]:
            chosen[id(p)].append(reason)

    # Fulls, newest first, in two flavours: point-in-time bases and backups restorable only by
    # name (e.g. logical dumps), so that neither kind loses its newest.
    fulls = sorted((p for p in pts if is_full(p)), key=lambda p: (p.end, p.backup), reverse=True)
    for flavour in (True, False):
        newest = next((p for p in fulls if p.window is flavour), None)
        if newest is not None:
            choose(newest, "the newest full of the source (never removed)")
    # The latest state (what a restore without --point-in-time gives, and the RPO) is never given
    # up: the point reaching the newest restorable time, on a tie the one with the newest base.
    latest = max((p for p in pts if p.window), key=lambda p: (p.end, p.start, -len(p.manifests)), default=None)
    if latest is not None:
        choose(latest, "the latest state of the source (a restore without --point-in-time; never removed)")
    times = [p.end for p in fulls]
    if policy.keep_last:
        for p in fulls[:policy.keep_last]:
            choose(p, f"keep_last {policy.keep_last}")
    if policy.min_fulls:
        for p in fulls[:policy.min_fulls]:
            choose(p, f"min_fulls {policy.min_fulls}")
    for rule in BUCKETS:
        n = getattr(policy, rule)
        if n:
            for i in gfs(times, rule, n):
                choose(fulls[i], f"{rule} {n}")
    if policy.keep_within is not None and fulls:
        since = policy.keep_within.before(fulls[0].end)
        for p in fulls:
            if p.end >= since:
                choose(p, f"keep_within {policy.keep_within} (of the newest full, {iso(fulls[0].end)})")
    incs = [p for p in pts if is_incremental(p)]
    if policy.keep_within_incremental is not None and incs:
        ref = max(p.end for p in incs)
        since = policy.keep_within_incremental.before(ref)
        for p in incs:
            if p.end >= since:
                choose(p, f"keep_within_incremental {policy.keep_within_incremental} (of the newest, {iso(ref)})")
    if policy.pitr_window is not None:
        lo = policy.pitr_window.before(now)
        for p in cover(pts, lo, now, points.intervals()):
            choose(p, f"pitr_window {policy.pitr_window} (restorable times since {iso(lo)})")

    keep_m: dict[str, list[str]] = {}
    keep_l: dict[str, list[str]] = {}

    def keep_point(p: RestorePoint, reasons: list[str]) -> None:
        why = f"needed by {_label(p)}"
        for m in p.manifests:
            keep_m.setdefault(m, []).append(why)
        for n in p.logs:
            keep_l.setdefault(n, []).append(why)

    by_id = {id(p): p for p in pts}
    kept_points = [(by_id[k], r) for k, r in chosen.items()]
    for p, r in kept_points:
        keep_point(p, r)

    # Young and protected objects, each with the smallest restore point that makes it usable.
    cutoff = now - grace
    extra: dict[str, str] = {}
    for m in manifests:
        if m.id in protected[0]:
            extra[m.id] = "named by a read lease"
        else:
            finished = _time(m.finished)
            if finished is None or finished > cutoff:
                extra[m.id] = f"younger than the grace period ({grace})" if finished else "no finish time recorded"
    for mid, why in extra.items():
        keep_m.setdefault(mid, []).append(why)
        users = [p for p in pts if mid in p.manifests]
        if users:
            p = min(users, key=lambda p: (len(p.manifests) + len(p.logs), p.end))
            if id(p) not in chosen:
                reason = f"makes manifest {mid} usable ({why})"
                chosen[id(p)] = [reason]
                kept_points.append((p, [reason]))
                keep_point(p, [reason])
    for r in logs:
        if r.name in protected[1]:
            keep_l.setdefault(r.name, []).append("named by a read lease")
        else:
            pushed = _time(r.pushed)
            if pushed is None or pushed > cutoff:
                keep_l.setdefault(r.name, []).append(
                    f"younger than the grace period ({grace})" if pushed else "no push time recorded")

    result = Plan(notes=list(points.notes_all()))
    depth: dict[str, int] = {}
    for p in pts:
        for i, m in enumerate(p.manifests):
            depth[m] = max(depth.get(m, 0), i)
    order = sorted((m for m in manifests), key=lambda m: (-depth.get(m.id, 0), m.finished, m.id))
    for m in sorted(manifests, key=lambda m: (m.finished, m.id)):
        if m.id in keep_m:
            result.keep_manifests[m.id] = keep_m[m.id]
    result.remove_manifests = [(m.id, UNNEEDED) for m in order if m.id not in keep_m]
    for r in sorted(logs, key=lambda r: r.name):
        if r.name in keep_l:
            result.keep_logs[r.name] = keep_l[r.name]
        else:
            result.remove_logs.append((r.name, UNNEEDED))
    result.kept_points = sorted(kept_points, key=lambda x: (x[0].end, x[0].start, x[0].backup))
    surviving = [p for p in pts if p.window and all(m in keep_m for m in p.manifests)
                 and all(n in keep_l for n in p.logs)]
    result.unreachable = subtract(points.intervals(), merge((p.start, p.end) for p in surviving))
    return result


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_iso(text)
    except (ValueError, TypeError):
        return None
