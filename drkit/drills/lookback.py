"""The RPO over a look-back window, from the repository's own history (pure).

For a disaster at time x, RPO(x) = x - (the newest safe time as of x), where "as of x" counts
only the manifests finished and the log records pushed by x -- what a restore at x could have
used.  Between two such commits the newest safe time stays put and RPO(x) grows by one second
per second; a commit that extends the coverage makes it drop.  So over a window [D - W, D]:

- the **worst** RPO is at one of the instants just before a commit (or at D), and
- the RPO's **distribution over time** is exact from the newest safe time after each commit
  (piecewise constant): the p95 is the RPO that 95 % of the window's seconds stay under.

The restore points are recomputed once per commit in the window.  A window with more commits
than ``max_evaluations`` is thinned to that many, evenly spread: skipping a commit can only make
the newest safe time between kept ones look older, so the figures are then an upper bound (said
in the result).  Times before the first restorable point count as "no point" (None) and are
reported apart, not as an RPO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from drkit.catalog import Catalog, RestorePoints
from drkit.repository.manifest import iso, parse_iso


def _commits(catalog: Catalog) -> list[tuple[datetime, str, object]]:
    out: list[tuple[datetime, str, object]] = []
    for m in catalog.manifests:
        if m.finished:
            out.append((parse_iso(m.finished), "manifest", m))
    for r in catalog.logs:
        if r.pushed:
            out.append((parse_iso(r.pushed), "log", r))
    out.sort(key=lambda x: x[0])
    return out


def _as_of(catalog: Catalog, commits: list[tuple[datetime, str, object]], upto: int) -> Catalog:
    """The catalog as it was with only the first ``upto`` commits."""
    have = commits[:upto]
    return dataclasses.replace(catalog, manifests=[o for _, k, o in have if k == "manifest"],  # type: ignore[misc]
                               logs=[o for _, k, o in have if k == "log"])


def lookback_rpo(catalog: Catalog, restore_points: Callable[[Catalog], RestorePoints], end: datetime,
                 window: timedelta, max_evaluations: int = 200) -> dict[str, Any]:
    start = end - window
    commits = _commits(catalog)
    before = sum(1 for t, _, _ in commits if t <= start)
    inside = [i + 1 for i, (t, _, _) in enumerate(commits) if start < t <= end]  # prefix lengths
    thinned = len(inside) > max_evaluations
    if thinned:
        step = len(inside) / max_evaluations
        inside = sorted({inside[min(len(inside) - 1, int(k * step))] for k in range(max_evaluations)} | {inside[-1]})

    def newest(upto: int) -> datetime | None:
        return restore_points(_as_of(catalog, commits, upto)).newest_safe_time()

    # The newest safe time on each stretch [t_k, t_k+1) of the window (piecewise constant).
    stretches: list[tuple[datetime, datetime, datetime | None]] = []
    current = newest(before)
    at = start
    for upto in inside:
        t = commits[upto - 1][0]
        stretches.append((at, t, current))
        current = newest(upto)
        at = t
    stretches.append((at, end, current))

    worst: float | None = None
    worst_at: datetime | None = None
    pieces: list[tuple[float, float]] = []  # (rpo at the stretch's start, its length) in seconds
    uncovered = 0.0
    for a, b, nst in stretches:
        length = (b - a).total_seconds()
        if length <= 0:
            continue
        if nst is None or nst > b:
            uncovered += length
            continue
        lo = max(0.0, (a - nst).total_seconds())
        hi = (b - nst).total_seconds()
        pieces.append((lo, length))
        if worst is None or hi > worst:
            worst, worst_at = hi, b
    return {
        "window_seconds": window.total_seconds(), "from": iso(start), "to": iso(end),
        "worst_seconds": round(worst, 3) if worst is not None else None,
        "worst_at": iso(worst_at) if worst_at else None,
        "p95_seconds": _percentile(pieces, 0.95),
        "median_seconds": _percentile(pieces, 0.5),
        "seconds_without_a_restore_point": round(uncovered, 3),
        "commits_in_window": sum(1 for t, _, _ in commits if start < t <= end),
        "evaluations": len(inside) + 1, "upper_bound": thinned,
    }


def _percentile(pieces: list[tuple[float, float]], q: float) -> float | None:
    """The RPO that a fraction ``q`` of the covered time stays at or under; each piece is RPO
    rising linearly from ``lo`` over ``length`` seconds (so uniform on [lo, lo + length])."""
    total = sum(length for _, length in pieces)
    if total <= 0:
        return None
    lo_all = min(lo for lo, _ in pieces)
    hi_all = max(lo + length for lo, length in pieces)

    def below(v: float) -> float:  # seconds of the window with RPO <= v
        return sum(min(max(v - lo, 0.0), length) for lo, length in pieces)

    a, b = lo_all, hi_all
    for _ in range(60):  # bisection: below() is monotone
        mid = (a + b) / 2
        if below(mid) >= q * total:
            b = mid
        else:
            a = mid
    return round(b, 3)
