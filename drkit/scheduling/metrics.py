"""Prometheus metrics computed from the repository (never from local job state), with the names
pinned in CONTRACTS.md.  ``drkit metrics`` prints them in the text exposition format or writes a
node-exporter textfile atomically (``--textfile``); the same registry will back the daemon's
``/metrics``.

Per source: the last successful backup per type (timestamp, duration, bytes read and stored),
the newest safe time and the RPO now (``now - newest safe time``, the number ``list`` shows), the
log records past a hole (``drkit_log_backlog_segments``: committed but unreachable, or in
flight), the last drill (timestamp of the last passed one, its RTO and RPO).  Repository-wide:
the last prune (from ``prune/released/`` markers).

One metric is this process's own observation, not the repository's: ``drkit_lock_wait_seconds``,
how long the last job of this process (``schedule due``, the daemon) waited for its job lease.
:func:`push` sends a registry to a Prometheus Pushgateway (``--push``).
"""

from __future__ import annotations

import os
from datetime import datetime
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from drkit.config import Config
from drkit.dumpers import dumper_for
from drkit.errors import ConfigError, DrkitError, SourceError
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
        "wait": Gauge("drkit_lock_wait_seconds", "How long the last job of this process waited for its lease "
                      "(whether it got it or gave up).", ["lease"], registry=reg),
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
    from .due import LOCK_WAITS

    for lease_name, waited in sorted(LOCK_WAITS.items()):
        if sources is None or lease_name.split("/", 1)[-1] in sources:
            g["wait"].labels(lease_name).set(waited)
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
    """The daemon's (or a ``due`` run's) own view: the exit code of each source's last job (0 = ok).
    The job is the ``type`` label (full, incremental, all): ``job`` is Prometheus's own target label
    (a scrape renames it, a Pushgateway overwrites it with its grouping label)."""
    from prometheus_client import Gauge

    g = Gauge("drkit_job_last_exit_code", "Exit code of the last scheduled job of the source (0: ok).",
              ["source", "type"], registry=reg)
    for source, r in last.items():
        g.labels(source, str(r.get("job", ""))).set(int(r.get("exit_code") or 0))


def render(reg: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(reg).decode()


def write_textfile(reg: Any, path: str) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(path, reg)  # a temporary file renamed into place: node-exporter never reads half


#: Basic-auth credentials of a Pushgateway come from these environment variables (never argv).
PUSH_USER_ENV = "DRKIT_PUSHGATEWAY_USER"
PUSH_PASSWORD_ENV = "DRKIT_PUSHGATEWAY_PASSWORD"


class PushFailed(SourceError):
    """The Pushgateway could not be reached or refused the push (exit 10)."""


def grouping_key(sources: list[str] | None, instance: str | None = None) -> dict[str, str]:
    """The push's group besides ``job``: ``instance`` is ``--instance``, else the sources pushed
    (comma-joined, sorted), else ``all``.  A push replaces its whole group, so runs for different
    sources land in different groups and do not erase each other's metrics."""
    return {"instance": instance or (",".join(sorted(sources)) if sources else "all")}


def push(reg: Any, url: str, *, job: str = "drkit", sources: list[str] | None = None,
         instance: str | None = None, timeout: float = 30.0) -> str:
    """PUT ``reg`` to the Pushgateway at ``url`` (replacing the group job/instance); return the
    group's path.  Credentials: $DRKIT_PUSHGATEWAY_USER / $DRKIT_PUSHGATEWAY_PASSWORD (basic auth)."""
    from prometheus_client import push_to_gateway
    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--push {url!r}: expected the Pushgateway's http(s)://HOST:PORT")
    if parts.username or parts.password:
        raise ConfigError(f"--push: the URL holds credentials; put them in ${PUSH_USER_ENV} and "
                          f"${PUSH_PASSWORD_ENV} instead (arguments are visible to every user of the machine)")
    user, password = os.environ.get(PUSH_USER_ENV), os.environ.get(PUSH_PASSWORD_ENV)
    if user:
        def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Any:
            return basic_auth_handler(url, method, timeout, headers, data, user, password or "")
    else:
        handler = default_handler
    key = grouping_key(sources, instance)
    where = f"{parts.scheme}://{parts.netloc}"
    try:
        push_to_gateway(where + parts.path, job=job, registry=reg, grouping_key=key, timeout=timeout,
                        handler=handler)
    except (OSError, HTTPException) as exc:  # URLError, HTTPError, timeouts, refused or cut connections
        status = getattr(exc, "code", None)
        why = f"HTTP {status} {getattr(exc, 'reason', '')}".strip() if status else str(getattr(exc, "reason", exc))
        hint = (f"check ${PUSH_USER_ENV} / ${PUSH_PASSWORD_ENV}" if status in (401, 403) else
                "check the URL and that the Pushgateway runs")
        raise PushFailed(f"cannot push the metrics to the Pushgateway at {where}: {why}; {hint}") from None
    return f"job={job} instance={key['instance']}"
