"""``drkit schedule due``: run what is due now, once -- for cron and Kubernetes CronJobs.

What ran is learned from the repository, not from local state, so any pod can run it:

* a ``full`` job is due when the source's newest full backup started before the cron
  expression's latest fire time (a run missed during downtime runs once, not once per miss);
* an ``incremental`` job of a policy that is not ``continuous``, where the datastore's
  incremental is a real backup (``Shipping.cron_incremental``), is due when neither an incremental manifest nor a log record
  was committed since the latest fire time; where incrementals are continuous log shipping (or
  the policy says ``continuous: true``: a follower ships them), the job is a *check* that shipping is current: it fails (exit 9) when the newest safe time is older
  than the policy's RPO target (or the shipping bound);
* each source's jobs run under ``leases/job/<source>``: when the previous run still holds it,
  ``due`` waits up to ``--wait`` seconds, then exits 6 naming the holder -- never a pile-up;
* after a source's jobs, the policy's retention runs (``forget``), unless another forget or
  prune holds ``leases/prune/repository`` (then it is left to the next run, and said).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drkit.config import Config
from drkit.dumpers import Dumper, LogShipment, dumper_for
from drkit.errors import ChainBroken, DrkitError, LockedError
from drkit.repository import Repository, leases
from drkit.repository.manifest import iso, parse_iso

from .policy import Policy, seconds

log = logging.getLogger(__name__)

JOB_TTL = 6 * 3600.0

#: Seconds the last job of each lease (``job/<source>``) in this process waited for it, got or not:
#: ``drkit_lock_wait_seconds`` (metrics.py) of ``schedule due`` (--push/--textfile) and the daemon.
LOCK_WAITS: dict[str, float] = {}


@dataclass
class JobResult:
    policy: str
    source: str
    job: str
    action: str  # "ran" | "not due" | "checked" | "failed" | "locked"
    detail: str = ""
    exit_code: int = 0
    seconds: float = 0.0
    backup: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DueReport:
    jobs: list[JobResult] = field(default_factory=list)
    retention: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return next((j.exit_code for j in self.jobs if j.exit_code), 0)

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": [j.as_dict() for j in self.jobs], "retention": self.retention, "exit_code": self.exit_code}


def last_runs(dumper: Dumper, repo: Repository) -> dict[str, datetime | None]:
    catalog = dumper.catalog(repo)
    full = [parse_iso(m.started) for m in catalog.manifests if m.type == "full"]
    inc = [parse_iso(m.started) for m in catalog.manifests if m.type == "incremental"]
    inc += [parse_iso(r.pushed) for r in catalog.logs if r.pushed]
    return {"full": max(full, default=None), "incremental": max(inc, default=None)}


def due(config: Config, repo: Repository, policies: list[Policy], only: list[str] | None = None, *,
        now: datetime | None = None, wait: float = 600.0, retention: bool = True) -> DueReport:
    report = DueReport()
    for p in policies:
        for source in p.sources:
            if only and source not in only:
                continue
            report.jobs += _source_jobs(config, repo, p, source, now, wait)
            if retention and p.retention is not None and any(j.action == "ran" for j in report.jobs
                                                             if j.source == source):
                report.retention.append(_forget(config, repo, p, source))
    return report


def _source_jobs(config: Config, repo: Repository, p: Policy, source: str, now: datetime | None,
                 wait: float) -> list[JobResult]:
    dumper = dumper_for(config, source)
    try:
        lease = _acquire(repo, source, wait)
    except LockedError as exc:
        return [JobResult(p.name, source, "all", "locked", str(exc), exc.exit_code)]
    out: list[JobResult] = []
    try:
        at = now or repo.server_time()
        last = last_runs(dumper, repo)
        ship = dumper.shipping(live=False)
        for job, cron in p.jobs().items():
            fired = p.previous_fire(cron, at)
            if job == "incremental" and (p.continuous or not ship.cron_incremental):
                out.append(_check_shipping(p, source, dumper, repo, at, ship))
                continue
            if last[job] is not None and last[job] >= fired:  # type: ignore[operator]
                out.append(JobResult(p.name, source, job, "not due",
                                     f"last ran {iso(last[job])}, after the latest fire time {iso(fired)}"))  # type: ignore[arg-type]
                continue
            t0 = time.monotonic()
            try:
                leases.renew(repo, lease)
                m = dumper.backup(repo, job)
                ident = m.id
                detail = m.text() if isinstance(m, LogShipment) else f"backup {m.id} committed"
                out.append(JobResult(p.name, source, job, "ran", detail, 0, round(time.monotonic() - t0, 3), ident))
                last = last_runs(dumper, repo)
            except DrkitError as exc:
                log.error("schedule %s: %s %s failed: %s", p.name, source, job, exc)
                out.append(JobResult(p.name, source, job, "failed", str(exc), exc.exit_code,
                                     round(time.monotonic() - t0, 3)))
    finally:
        leases.release(repo, lease)
    return out


def _acquire(repo: Repository, source: str, wait: float) -> leases.Lease:
    t0 = time.monotonic()
    deadline = t0 + max(0.0, wait)
    while True:
        try:
            lease = leases.acquire(repo, "job", source, JOB_TTL, f"a scheduled job of source {source}")
            LOCK_WAITS[f"job/{source}"] = round(time.monotonic() - t0, 3)
            return lease
        except LockedError:
            if time.monotonic() >= deadline:
                LOCK_WAITS[f"job/{source}"] = round(time.monotonic() - t0, 3)
                raise
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def _check_shipping(p: Policy, source: str, dumper: Dumper, repo: Repository, at: datetime, ship: Any) -> JobResult:
    points = dumper.restore_points(dumper.catalog(repo))
    newest = points.newest_safe_time()
    bound = seconds(p.targets.rpo) or (ship.interval * 2 if ship.interval else 3600.0)
    if newest is None:
        return JobResult(p.name, source, "incremental", "failed", "no restore point yet: take a full backup and "
                         "start log shipping", ChainBroken.exit_code)
    age = (at - newest).total_seconds()
    if age > bound:
        return JobResult(p.name, source, "incremental", "failed",
                         f"log shipping is not current: the newest restorable time is {iso(newest)}, {age:.0f} s ago "
                         f"(bound {bound:.0f} s); check the archiver or follower of {source}", ChainBroken.exit_code)
    return JobResult(p.name, source, "incremental", "checked",
                     f"continuous shipping is current: newest restorable time {iso(newest)} ({age:.0f} s ago)")


def _forget(config: Config, repo: Repository, p: Policy, source: str) -> dict[str, Any]:
    from drkit.retention.forget import forget

    try:
        results = forget(config, repo, source, override=p.retention)
    except LockedError as exc:
        return {"source": source, "skipped": f"another forget or prune runs ({exc}); left to the next run"}
    except DrkitError as exc:
        return {"source": source, "failed": str(exc)}
    return {"source": source, **results[0].as_dict(False)} if results else {"source": source}


def utcnow() -> datetime:
    return datetime.now(UTC)
