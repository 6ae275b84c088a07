"""``drkit forget``: apply each source's retention policy, removing manifests and log records.

The data they reference stays until ``drkit prune``.  While it deletes, forget holds the
exclusive lease ``leases/prune/repository`` (a live holder: :class:`~drkit.errors.LockedError`,
exit 6) and renews it before every batch, so a holder paused past its TTL stops
(:class:`~drkit.repository.leases.LeaseLost`) instead of deleting under someone else.  What the
plan removes is computed from the dumper's restore points (:mod:`drkit.retention.planner`);
``dry_run`` computes the same plan and deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drkit.config import Config
from drkit.dumpers import dumper_for
from drkit.errors import ConfigError, DrkitError, IntegrityError, LockedError
from drkit.repository import Repository, forgotten, leases
from drkit.repository import format as fmt
from drkit.repository.manifest import parse_iso
from drkit.retention.planner import Plan, plan
from drkit.retention.policy import Duration, RetentionPolicy, parse_duration

log = logging.getLogger(__name__)

DEFAULT_GRACE = Duration(hours=24)
LEASE_TTL = 600.0
BATCH = 500


@dataclass
class SourceResult:
    source: str
    policy: RetentionPolicy
    plan: Plan
    damaged: list[dict[str, str]] = field(default_factory=list)
    removed_manifests: list[str] = field(default_factory=list)
    removed_logs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self, dry_run: bool) -> dict[str, Any]:
        out = {"source": self.source, "policy": self.policy.as_dict(), "dry_run": dry_run, **self.plan.as_dict(),
               "damaged": self.damaged}
        if not dry_run:
            out["removed"] = {"manifests": self.removed_manifests, "logs": len(self.removed_logs),
                              "failed": self.failed}
        return out


def policies(config: Config, source: str | None, override: RetentionPolicy | None) -> dict[str, RetentionPolicy]:
    """The policy of each source forget acts on.  A named source with neither a configured
    policy nor flags is refused (never emptied); without SOURCE, every source with a policy."""
    override = None if override is None or override.is_empty() else override
    if source is not None:
        cfg = config.source(source)
        if cfg.retention is None and override is None:
            raise ConfigError(
                f"source {source!r} has no retention policy: set sources.{source}.retention in the "
                "configuration or give --keep-* / --pitr-window / --min-fulls flags; nothing was removed")
        return {source: (cfg.retention or RetentionPolicy()).merged(override)}
    chosen = {n: s.retention.merged(override) for n, s in sorted(config.sources.items()) if s.retention is not None}
    if not chosen:
        if override is None:
            raise ConfigError("no source has a retention policy (sources.<name>.retention); name a SOURCE with "
                              "--keep-* flags or configure one; nothing was removed")
        raise ConfigError("flags without SOURCE apply to the sources that have a configured policy, and none has; "
                          "name the SOURCE to forget with these flags; nothing was removed")
    return chosen


def protected(repo: Repository) -> tuple[set[str], set[str], list[str]]:
    """(manifest ids, log names, notes) that live read leases name.

    A live read lease that does not say what it reads (today's lease records do not) protects
    nothing it could name, so forget refuses while it is live rather than guess."""
    mids: set[str] = set()
    names: set[str] = set()
    notes: list[str] = []
    now = repo.server_time()
    for info in sorted(repo.storage.list(f"{leases.PREFIX}read/"), key=lambda i: i.key):
        try:
            lease = leases.load(repo, info.key)
        except IntegrityError as exc:
            notes.append(f"read lease {info.key} is damaged ({exc}); treated as stale")
            continue
        if lease is None or (now - parse_iso(lease.renewed)).total_seconds() > lease.ttl:
            continue
        named_m = getattr(lease, "manifests", None)
        named_l = getattr(lease, "logs", None)
        if named_m is None and named_l is None:
            raise LockedError(
                f"a restore, drill or copy holds {info.key} ({lease.describe()}) and its lease does not name what "
                "it reads; run forget again when it has finished (or its lease expires)")
        mids.update(named_m or ())
        names.update(named_l or ())
    return mids, names, notes


def forget(config: Config, repo: Repository, source: str | None = None, *,
           override: RetentionPolicy | None = None, grace: Duration = DEFAULT_GRACE,
           dry_run: bool = False) -> list[SourceResult]:
    """Plan (and unless ``dry_run``, carry out) retention for ``source`` or every source with a
    policy.  Holds ``leases/prune/repository`` for the whole run (also a dry run, so its answer
    is not overtaken by a concurrent prune)."""
    chosen = policies(config, source, override)
    lease = leases.acquire(repo, "prune", "repository", LEASE_TTL, "a forget or prune of this repository")
    try:
        now = repo.server_time()
        grace_td = now - grace.before(now)
        mids, names, notes = protected(repo)
        results = []
        for name, policy in chosen.items():
            dumper = dumper_for(config, name)
            catalog = dumper.catalog(repo)
            points = dumper.restore_points(catalog)
            p = plan(points, catalog.manifests, catalog.logs, policy, catalog.now or now, grace_td, (mids, names))
            p.notes += notes
            res = SourceResult(name, policy, p, [d.as_dict() for d in catalog.damaged])
            if not dry_run:
                _delete(repo, lease, res)
            results.append(res)
        return results
    finally:
        try:
            leases.release(repo, lease)
        except DrkitError as exc:  # the lease expires by itself; the run's outcome stands
            log.warning("could not release %s: %s", lease.key, exc)


def _delete(repo: Repository, lease: leases.Lease, res: SourceResult) -> None:
    """Manifests first (incrementals before their parents), then log records oldest first, in
    batches, re-checking before each that this process still holds the lease."""
    mids = [m for m, _ in res.plan.remove_manifests]
    lnames = [n for n, _ in res.plan.remove_logs]
    # The decision is committed first: holes it leaves are then told apart from damage.
    leases.renew(repo, lease)
    forgotten.record(repo, res.source, lnames, mids, f"drkit forget, policy {res.policy}")
    res.removed_manifests += _in_batches(repo, lease, res, mids, repo.delete_manifests, fmt.manifest_key)
    res.removed_logs += _in_batches(repo, lease, res, lnames, repo.delete_log_records, fmt.log_key)
    if res.failed:
        raise DrkitError(f"forget of {res.source}: {len(res.failed)} object(s) could not be deleted "
                         f"({', '.join(res.failed[:5])}); everything they are needed for is unchanged. Run forget again")


def _in_batches(repo: Repository, lease: leases.Lease, res: SourceResult, names: list[str],
                delete: Callable[[str, list[str]], list[str]], key: Callable[[str, str], str]) -> list[str]:
    """Delete ``names`` of ``res.source`` BATCH at a time, renewing the lease before each batch
    (a holder that lost it stops before deleting more); returns the names deleted and adds the
    keys that could not be deleted to ``res.failed``."""
    done: list[str] = []
    for i in range(0, len(names), BATCH):
        batch = names[i:i + BATCH]
        leases.renew(repo, lease)
        failed = delete(res.source, batch)
        res.failed += failed
        gone = set(failed)
        done += [n for n in batch if key(res.source, n) not in gone]
    return done


def grace_of(text: str) -> Duration:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--grace: {exc}") from None
