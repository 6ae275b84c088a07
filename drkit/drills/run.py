"""``drkit drill SOURCE``: restore into a scratch instance, check it, measure RPO and RTO.

1. *Plan*: the source's restore points as of the disaster time D (now, by the storage's clock):
   the newest safe time, so the **RPO** is D minus it (never a value from configuration); the
   restore point the drill restores (the latest state, or ``--point-in-time T``).
2. A read lease ``leases/read/drill-<id>`` names the manifests and log records that point needs:
   forget keeps them and prune defers deleting data while the drill runs.
3. *Restore* with ``--start`` into a scratch directory: the dumper lays the data down and starts a
   server on it (PostgreSQL and Redis on the restored files, MongoDB a scratch server it restores
   into), exactly as ``drkit restore`` does.
4. *Checks*: the dumper asks the serving instance what it holds (``Dumper.check_restored``), then
   the user checks of the source's policy run (drkit/drills/checks.py): data checks through
   ``Dumper.run_query``, HTTP checks against the operator's application started on the instance.
5. **RTO** = wall time from the drill's start to a checked, serving instance: the phases (plan,
   restore with its own phases, checks) add up to it.  Then the instance is stopped and the
   directory removed (``--keep`` keeps them for a look).

The result -- passed, or which target or check failed, or the error that stopped it -- is
stored in the repository (``drills/<source>/<id>``) and returned; a missed target or a failed
check or restore is exit 13 (an error keeps its own code in the stored record).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.config import Config
from drkit.dumpers import RestoreRequest, RestoreResult, dumper_for
from drkit.errors import DrkitError
from drkit.repository import leases
from drkit.repository.drills import put_drill
from drkit.repository.manifest import iso

if TYPE_CHECKING:
    from drkit.scheduling.policy import DrillSpec

log = logging.getLogger(__name__)

DEFAULT_RPO = 15 * 60.0
DEFAULT_RTO = 4 * 3600.0
LEASE_TTL = 6 * 3600.0
LOOK_BACK = 7 * 86400.0  # the RPO's history a drill reports (worst, p95): a week by default


@dataclass
class DrillReport:
    id: str
    source: str
    datastore: str
    disaster_at: str
    requested: str  # "latest" or an ISO time
    targets: dict[str, float]
    started: str = ""
    finished: str = ""
    newest_safe_time: str | None = None
    rpo_seconds: float | None = None
    rto_seconds: float | None = None
    restored_to: str | None = None
    backup: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    restore_phases: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # plan_restore's bytes and prediction
    app: dict[str, Any] | None = None  # the operator's application of the HTTP checks (its output's tail)
    failures: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    stored_as: str | None = None
    runbook: str | None = None  # the runbook this drill exercises (the dumper's, runbooks/...)
    rpo_lookback: dict[str, Any] | None = None  # the RPO over the look-back window (drills/lookback.py)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}


def new_drill_id(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_drill(config: Config, source: str, *, point_in_time: datetime | None = None, rpo_target: float | None = None,
              rto_target: float | None = None, workdir: Path | None = None, keep: bool = False,
              store: bool = True, spec: DrillSpec | None = None, look_back: float = LOOK_BACK) -> DrillReport:
    """``spec``: the user checks (and app) of the source's policy, run after the built-in check."""
    from drkit import ops

    t0 = time.monotonic()
    started = datetime.now(UTC)
    dumper = dumper_for(config, source)
    repo = ops.open_repository(config)
    disaster = repo.server_time()
    report = DrillReport(new_drill_id(disaster), source, dumper.datastore, iso(disaster),
                         iso(point_in_time) if point_in_time else "latest",
                         {"rpo_seconds": rpo_target or DEFAULT_RPO, "rto_seconds": rto_target or DEFAULT_RTO},
                         started=iso(started), runbook=dumper.runbook)
    scratch = Path(tempfile.mkdtemp(prefix=f"drkit-drill-{source}-", dir=workdir))
    scratch.chmod(0o755)  # a restored server may run as another OS user (PostgreSQL's os_user)
    result: RestoreResult | None = None
    lease = None
    marks = [t0]

    def phase(name: str) -> None:
        marks.append(time.monotonic())
        report.phases[name] = round(marks[-1] - marks[-2], 3)

    catalog = None
    try:
        catalog = dumper.catalog(repo)
        points = dumper.restore_points(catalog)
        newest = points.newest_safe_time()
        if newest is not None:
            report.newest_safe_time = iso(newest)
            report.rpo_seconds = round((disaster - newest).total_seconds(), 3)
        want = point_in_time or newest
        covering = sorted(points.covering(want), key=lambda p: p.start) if want else []
        chosen = covering[-1] if covering else None
        if want is not None and chosen is not None:
            from drkit.drills.plan import plan_restore

            planned = plan_restore(config, repo, source, point_in_time)
            report.plan = {k: planned[k] for k in ("bytes", "backup_bytes", "log_bytes", "log_records",
                                                   "predicted_rto_seconds", "basis")}
        lease = leases.acquire(repo, "read", f"drill-{report.id}", LEASE_TTL, f"drill {report.id} of {source}",
                               manifests=list(chosen.manifests) if chosen else [],
                               logs=list(chosen.logs) if chosen else [])
        phase("plan")
        request = RestoreRequest(config.source(source), scratch / "restore", point_in_time=point_in_time, start=True)
        result = ops.restore(config, request)
        report.restore_phases = {k: round(v, 3) for k, v in result.phases.items()}
        report.backup = result.backup_id
        report.restored_to = iso(result.point_in_time) if result.point_in_time else None
        phase("restore")
        facts = dumper.check_restored(result)
        report.facts = facts
        report.checks.append({"name": "serving", "ok": True, "detail": str(facts.get("serving", ""))})
        if spec is not None and spec.checks:
            from drkit.drills.checks import run_user_checks

            user, report.app = run_user_checks(dumper, result, spec, scratch)
            report.checks += user
            report.failures += [f"check {c['name']} failed: {c['detail']}" for c in user if not c["ok"]]
        phase("checks")
        report.rto_seconds = round(marks[-1] - t0, 3)
    except DrkitError as exc:
        report.error = {"type": type(exc).__name__, "exit_code": exc.exit_code, "message": str(exc)}
        report.failures.append(f"the drill failed: {exc}")
        if not any(c["name"] == "serving" for c in report.checks):
            report.checks.append({"name": "serving", "ok": False, "detail": str(exc)})
        done = {c["name"] for c in report.checks}
        report.checks += [{"name": c.name, "ok": False, "detail": "not run: the drill failed before its checks"}
                          for c in (spec.checks if spec is not None else []) if c.name not in done]
    finally:
        if result is not None:
            try:
                dumper.stop_restored(result)
            except DrkitError as exc:
                log.warning("drill %s: stopping the restored instance failed: %s", report.id, exc)
        if lease is not None:
            try:
                leases.release(repo, lease)
            except DrkitError as exc:
                log.warning("drill %s: releasing %s failed: %s", report.id, lease.key, exc)
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if look_back > 0 and catalog is not None:
        # After the timed phases: the history is not recovery work and must not count in the RTO.
        from datetime import timedelta

        from drkit.drills.lookback import lookback_rpo

        try:
            report.rpo_lookback = lookback_rpo(catalog, dumper.restore_points, disaster, timedelta(seconds=look_back))
        except DrkitError as exc:
            log.warning("drill %s: the look-back RPO could not be computed: %s", report.id, exc)
    _judge(report)
    report.finished = iso(datetime.now(UTC))
    if store:
        report.stored_as = put_drill(repo, source, report.id, report.as_dict())
    return report


def _judge(report: DrillReport) -> None:
    rpo_t, rto_t = report.targets["rpo_seconds"], report.targets["rto_seconds"]
    if report.rpo_seconds is None:
        report.failures.append("no restore point: the RPO is unbounded")
    elif report.rpo_seconds > rpo_t:
        report.failures.append(f"RPO {report.rpo_seconds:.0f} s exceeds the target {rpo_t:.0f} s (the newest "
                               f"restorable time is {report.newest_safe_time})")
    if report.error is None and report.rto_seconds is not None and report.rto_seconds > rto_t:
        report.failures.append(f"RTO {report.rto_seconds:.1f} s exceeds the target {rto_t:.0f} s")
