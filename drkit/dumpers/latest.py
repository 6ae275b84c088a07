"""Restoring "the latest state" when a log chain has a hole: wait while it is in flight, then
refuse naming the newest reachable point -- never a quiet short restore.  Shared by every dumper.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

from drkit.catalog import Catalog, Gap, RestorePoints
from drkit.errors import ChainBroken, DrkitError, OutsideWindow
from drkit.repository.manifest import iso

if TYPE_CHECKING:
    from drkit.dumpers import Dumper
    from drkit.repository import Repository


def wait_out_in_flight(dumper: Dumper, repo: Repository, catalog: Catalog, bound: float) -> Catalog:
    """Return a catalog whose newest state is reachable without a hole, re-reading it while the
    holes are in flight (up to ``bound`` seconds); raise ChainBroken otherwise."""
    deadline = time.monotonic() + max(0.0, bound)
    while True:
        points = dumper.restore_points(catalog)
        blocking = points.blocking_latest()
        if not blocking:
            return catalog
        if all(g.state == "in_flight" for g in blocking) and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
            catalog = dumper.catalog(repo)
            continue
        raise refuse_latest(dumper.source.name, points, blocking, waited=bound)


def refuse_latest(source: str, points: RestorePoints, blocking: list[Gap], waited: float = 0.0) -> ChainBroken:
    newest = points.newest_safe_time()
    holes = "; ".join(g.text() for g in blocking)
    flight = (f" (still in flight after waiting {waited:.0f} s)"
              if all(g.state == "in_flight" for g in blocking) else "")
    if newest is None:
        how = "no restore point is reachable"
    else:
        how = (f"the newest reachable point is {iso(newest)}; to restore to it, run "
               f"'drkit restore {source} --point-in-time {iso(newest)} ...'")
    return ChainBroken(
        f"the latest state of source {source} cannot be restored exactly: its log chain has a hole{flight}: "
        f"{holes}. A restore would stop at the hole and silently lack everything after it, so it was refused "
        f"and nothing was written. {how[0].upper() + how[1:]}. To get the rest back, put the missing log record "
        "back (re-archive it from the source, or restore the object), then run the restore again.")


def past_gap(points: RestorePoints, target: datetime | None, exc: OutsideWindow) -> DrkitError:
    """A point-in-time request outside the window: exit 9 naming the hole when the time lies past
    a hole that cut the chain (the log exists, the chain to it does not), else exit 8."""
    cut = [g for g in points.gaps if target is not None and g.after is not None and g.after < target]
    if cut and any(g.beyond or g.lost for g in cut):
        return ChainBroken(f"{exc}. The chain to that time is broken: {'; '.join(g.text() for g in cut)}")
    if points.gaps:
        return OutsideWindow(f"{exc}. Note: {'; '.join(g.text() for g in points.gaps)}")
    return exc
