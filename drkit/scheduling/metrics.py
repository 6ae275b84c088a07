"""Prometheus metrics computed from the repository (never from local job state), with the names
pinned in CONTRACTS.md.  ``drkit metrics`` prints them in the text exposition format or writes a
node-exporter textfile atomically (``--textfile``); the same registry will back the daemon's
``/metrics``.

Per source: the last successful backup per type (timestamp, duration, bytes read and stored),
the newest safe time and the RPO now (``now - newest safe time``, the number ``list`` shows), the
log records past a hole (``drkit_log_backlog_segments``: committed but unreachable, or in
flight), the last drill (timestamp of the last passed one, its RTO and RPO).  Repository-wide:
the last prune (from ``prune/released/`` markers).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drkit.config import Config
from drkit.dumpers import dumper_for
from drkit.errors import DrkitError
from drkit.repository import Repository
from drkit.repository.drills import list_drills
from drkit.repository.manifest import parse_iso


def registry(config: Config, repo: Repository, sources: list[str] | None = None) -> Any:
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    g = {
        "last": Gauge("drkit_backup_last_success_timestamp_seconds", "When the newest committed backup of this "
                      "type finished (Unix time).", ["source", "type"], registry=reg),
        "dur": Gauge("drkit_backup_duration_seconds", "How long the newest backup of this type took.",
                     ["source", "type"], registry=reg),
        "read": Gauge("drkit_backup_read_bytes_total", "Bytes read from the source by all committed backups.",
                      ["source"], registry=reg),
        "stored": Gauge("drkit_backup_stored_bytes_total", "Bytes stored (new, after dedup and compression) by "
                        "all committed backups.", ["source"], registry=reg),
        "safe": Gauge("drkit_newest_safe_timestamp_seconds", "The newest time every commit up to which is in the "
                      "repository (Unix time).", ["source"], registry=reg),
        "rpo": Gauge("drkit_rpo_seconds", "Now minus the newest safe time.", ["source"], registry=reg),
        "backlog": Gauge("drkit_log_backlog_segments", "Committed log records past a hole in a chain (no restore "
                         "reaches them until it is filled).", ["source"], registry=reg),
        "drill": Gauge("drkit_drill_last_success_timestamp_seconds", "When the last passed drill finished.",
                       ["source"], registry=reg),
        "drill_rto": Gauge("drkit_drill_rto_seconds", "The RTO the last drill measured.", ["source"], registry=reg),
        "drill_rpo": Gauge("drkit_drill_rpo_seconds", "The RPO the last drill measured.", ["source"], registry=reg),
        "prune": Gauge("drkit_prune_last_success_timestamp_seconds", "When the last prune finished.",
                       registry=reg),
        "lease": Gauge("drkit_lease_held_seconds", "How long each live lease has been held (a stuck job or "
                       "lock shows as a growing value).", ["lease"], registry=reg),
    }
    now = repo.server_time()
    for name in sources or sorted(config.sources):
        dumper = dumper_for(config, name)
        catalog = dumper.catalog(repo)
        newest: dict[str, Any] = {}
        for m in catalog.manifests:
            if m.type not in newest or m.finished > newest[m.type].finished:
                newest[m.type] = m
        for kind, m in newest.items():
            g["last"].labels(name, kind).set(parse_iso(m.finished).timestamp())
            g["dur"].labels(name, kind).set((parse_iso(m.finished) - parse_iso(m.started)).total_seconds())
        g["read"].labels(name).set(sum(m.size for m in catalog.manifests))
        g["stored"].labels(name).set(sum(m.stored_bytes for m in catalog.manifests))
        points = dumper.restore_points(catalog)
        safe = points.newest_safe_time()
        if safe is not None:
            g["safe"].labels(name).set(safe.timestamp())
            g["rpo"].labels(name).set(max(0.0, (now - safe).total_seconds()))
        g["backlog"].labels(name).set(sum(len(gap.beyond) for gap in points.gaps))
        drills, _ = list_drills(repo, name)
        if drills:
            last = drills[-1]
            if last.get("rto_seconds") is not None:
                g["drill_rto"].labels(name).set(last["rto_seconds"])
            if last.get("rpo_seconds") is not None:
                g["drill_rpo"].labels(name).set(last["rpo_seconds"])
            passed = [d for d in drills if d.get("passed")]
            if passed:
                g["drill"].labels(name).set(parse_iso(passed[-1]["finished"]).timestamp())
    from drkit.repository import leases

    for info in repo.storage.list(leases.PREFIX):
        try:
            held = leases.load(repo, info.key)
        except DrkitError:
            continue
        if held is not None and (now - parse_iso(held.renewed)).total_seconds() <= held.ttl:
            g["lease"].labels(info.key[len(leases.PREFIX):]).set((now - parse_iso(held.acquired)).total_seconds())
    released = list(repo.storage.list("prune/released/"))
    if released:
        g["prune"].set(max(_mtime(i) for i in released))
    return reg


def _mtime(info: Any) -> float:
    t = info.modified
    if isinstance(t, datetime):
        return t.timestamp()
    return float(t or 0)


def add_job_results(reg: Any, last: dict[str, dict[str, Any]]) -> None:
    """The daemon's own view: the exit code of each source's last job (0 = ok)."""
    from prometheus_client import Gauge

    g = Gauge("drkit_job_last_exit_code", "Exit code of the last scheduled job of the source (0: ok).",
              ["source", "job"], registry=reg)
    for source, r in last.items():
        g.labels(source, str(r.get("job", ""))).set(int(r.get("exit_code") or 0))


def render(reg: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(reg).decode()


def write_textfile(reg: Any, path: str) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(path, reg)  # a temporary file renamed into place: node-exporter never reads half
