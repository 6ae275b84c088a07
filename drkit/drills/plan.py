"""``drkit plan restore SOURCE``: what a restore would read, and how long it should take.

Before a byte is downloaded: the restore point that serves the requested time (the newest full
whose chain reaches it, as the restore itself chooses), the manifests and log records it needs,
the bytes to fetch (their streams' sizes) and of those the log bytes to replay, and a predicted
RTO = bytes / throughput.  The throughput is the median of this source's passed drills (bytes
they planned / their RTO); before any drill, the stated default (``DEFAULT_MBPS``) is used and
said so.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from drkit.config import Config
from drkit.dumpers import dumper_for
from drkit.errors import BackupNotFound, OutsideWindow
from drkit.repository import Repository
from drkit.repository.drills import list_drills
from drkit.repository.manifest import iso

DEFAULT_MBPS = 20.0  # MB/s before any drill measured this repository: conservative for S3 + zstd + decrypt


def plan_restore(config: Config, repo: Repository, source: str, point_in_time: datetime | None = None,
                 *, drills: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    dumper = dumper_for(config, source)
    catalog = dumper.catalog(repo)
    points = dumper.restore_points(catalog)
    newest = points.newest_safe_time()
    want = point_in_time or newest
    if want is None:
        raise BackupNotFound(f"source {source} has no restore point")
    covering = sorted(points.covering(want), key=lambda p: p.start)
    if not covering:
        window = ", ".join(f"{iso(a)} .. {iso(b)}" for a, b in points.intervals()[-6:]) or "nothing"
        raise OutsideWindow(f"{iso(want)} is outside the recoverable window of source {source}: {window}")
    point = covering[-1]
    by_id = {m.id: m for m in catalog.manifests}
    by_name = {r.name: r for r in catalog.logs}
    backup_bytes = sum(s.size for mid in point.manifests if mid in by_id for s in by_id[mid].streams)
    logs = [by_name[n] for n in point.logs if n in by_name]
    if point_in_time is not None and point.kind == "range":
        # Only the records up to the time are read (each restore stops there).
        logs = [r for r in logs if _first_ms(r) is None or _first_ms(r) <= want.timestamp() * 1000]
    log_bytes = sum(r.stream.size for r in logs)
    total = backup_bytes + log_bytes
    if drills is None:
        drills, _ = list_drills(repo, source)
    rates = [d["plan"]["bytes"] / d["rto_seconds"] for d in drills
             if d.get("passed") and d.get("rto_seconds") and (d.get("plan") or {}).get("bytes")]
    if rates:
        rate = statistics.median(rates)
        basis = f"median throughput of this source's {len(rates)} passed drill(s): {rate / 1e6:.1f} MB/s"
    else:
        rate = DEFAULT_MBPS * 1e6
        basis = (f"no drill has measured this source yet: the stated default of {DEFAULT_MBPS:g} MB/s "
                 "(run 'drkit drill' to measure it)")
    return {
        "source": source, "point_in_time": iso(want), "latest": point_in_time is None,
        "restore_point": point.as_dict(), "backup": point.backup,
        "manifests": list(point.manifests), "log_records": len(logs),
        "bytes": total, "backup_bytes": backup_bytes, "log_bytes": log_bytes,
        "predicted_rto_seconds": round(total / rate, 1), "throughput_bytes_per_second": round(rate, 1),
        "basis": basis,
    }


def _first_ms(rec: Any) -> float | None:
    meta = rec.metadata
    for key in ("first_ms", "first_ts_ms"):
        if meta.get(key) is not None:
            return float(meta[key])
    return None
