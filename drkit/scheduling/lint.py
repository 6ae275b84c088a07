"""``drkit schedule lint``: can each policy meet its own RPO target?

The worst-case RPO is what the policy really captures:

* ``continuous: true``: the datastore's continuous shipping bound (``Dumper.shipping``: WAL
  archiving's ``archive_timeout``, a follower's slice length), read from the live server where it
  answers;
* otherwise the longest stretch between two consecutive scheduled backups that capture new commits
  (fulls, and incrementals where ``backup --type incremental`` is a real backup of the datastore),
  over the next 8 days in the policy's time zone (so DST changes count), plus the newest backup's
  duration as measured in the repository (its commits arrive only when it is committed).

RTO: predicted from drills (not built yet); reported as unknown, never as met.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drkit.config import Config
from drkit.dumpers import dumper_for

from .policy import Policy, fmt_seconds, seconds

HORIZON_DAYS = 8


@dataclass
class Finding:
    policy: str
    source: str
    worst_rpo_seconds: float | None
    rpo_target_seconds: float | None
    how: str
    ok: bool
    fix: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        worst = "unbounded" if self.worst_rpo_seconds is None else fmt_seconds(self.worst_rpo_seconds)
        target = "none" if self.rpo_target_seconds is None else fmt_seconds(self.rpo_target_seconds)
        verdict = "ok" if self.ok else "FAILS"
        lines = [f"{self.policy}: {self.source}: worst-case RPO {worst} (target {target}): {verdict}",
                 f"  because {self.how}"]
        if not self.ok and self.fix:
            lines.append(f"  fix: {self.fix}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def lint(config: Config, policies: list[Policy], *, now: datetime | None = None, live: bool = True,
         durations: dict[str, float] | None = None) -> list[Finding]:
    """One finding per (policy, source).  ``durations``: the newest backup's duration per source
    (seconds), measured in the repository by the caller."""
    now = now or datetime.now(UTC)
    out = []
    for p in policies:
        target = seconds(p.targets.rpo)
        for source in p.sources:
            dumper = dumper_for(config, source)
            ship = dumper.shipping(live=live)
            if ship.interval is None and p.log_flush is not None:
                declared = seconds(p.log_flush)
                ship = dataclasses.replace(ship, interval=declared,
                                           how=f"{ship.how}; the policy declares log_flush {fmt_seconds(declared or 0)}")
            took = (durations or {}).get(source, 0.0)
            notes = ["RTO: unknown until a drill has measured a restore of this source"] if p.targets.rto else []
            if p.continuous:
                worst = ship.interval
                how = ship.how if worst is not None else f"{ship.how}: continuous shipping does not bound the RPO"
                fix = ship.fix or "a datastore without continuous shipping needs cron incrementals (continuous: false)"
            else:
                worst, how, fix = _cron_rpo(p, dumper.datastore, ship.cron_incremental, now, took, target, ship)
            ok = target is None or (worst is not None and worst <= target)
            out.append(Finding(p.name, source, worst, target, how, ok, fix if not ok else "", notes))
    return out


def _cron_rpo(p: Policy, datastore: str, incremental: bool, now: datetime, took: float, target: float | None,
              ship: Any) -> tuple[float, str, str]:
    from datetime import timedelta

    jobs = {"full": p.full}
    if p.incremental and incremental:
        jobs["incremental"] = p.incremental
    end = now + timedelta(days=HORIZON_DAYS)
    fires = sorted({t for cron in jobs.values() for t in p.fires(cron, now, end)})
    gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)]
    gap = max(gaps) if gaps else HORIZON_DAYS * 86400.0
    worst = gap + took
    runs = " and ".join(f"{kind} '{cron}'" for kind, cron in jobs.items())
    how = (f"the longest stretch between scheduled backups ({runs}, {p.timezone}) is {fmt_seconds(gap)}"
           + (f", plus {fmt_seconds(took)} for the newest backup to commit" if took else "")
           + "; a commit just after one backup waits that long for the next")
    if p.incremental and not incremental:
        how += (f" (the {datastore} source's 'incremental' is not a backup a schedule runs: its incrementals are "
                "continuous log shipping, which this policy does not declare)")
    if ship.interval is not None:
        fix = (f"ship continuously instead (continuous: true; {ship.how}: worst case about "
               f"{fmt_seconds(ship.interval)})")
    elif target is not None and incremental:
        fix = f"run incrementals at least every {fmt_seconds(max(60.0, target - took))}"
    elif ship.fix:
        fix = f"ship continuously (continuous: true) and {ship.fix}"
    else:
        fix = "turn on continuous log shipping for this source and declare continuous: true"
    return worst, how, fix
