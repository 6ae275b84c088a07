"""``drkit forget``: apply retention policies (thin: the work is in :mod:`drkit.retention.forget`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from drkit.errors import ConfigError

if TYPE_CHECKING:
    from drkit.cli.main import AppContext


def _count(name: str) -> Any:
    return click.option(f"--{name.replace('_', '-')}", name, type=click.IntRange(min=0),
                        help=f"Policy override for this run: {name}.")


def _duration(name: str, example: str) -> Any:
    return click.option(f"--{name.replace('_', '-')}", name, metavar="DURATION",
                        help=f"Policy override for this run: {name} (e.g. {example}; units y, m, w, d, h).")


@click.command()
@click.argument("source", required=False)
@click.option("--dry-run", is_flag=True, help="Show what would be removed and why, and the restore-point time "
              "ranges that would become unreachable; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_count("keep_last")
@_count("keep_hourly")
@_count("keep_daily")
@_count("keep_weekly")
@_count("keep_monthly")
@_count("keep_yearly")
@_duration("keep_within", "30d")
@_duration("keep_within_incremental", "7d")
@_duration("pitr_window", "7d")
@_count("min_fulls")
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="Never remove a manifest or log record younger than this (0 for tests and idle repositories).")
@click.pass_obj
def forget(app: AppContext, source: str | None, dry_run: bool, as_json: bool, grace: str, **rules: Any) -> None:
    """Remove the backups and log records SOURCE's retention policy no longer keeps (every source
    with a policy when SOURCE is omitted).  The data stays until 'drkit prune'.

    \b
    Kept regardless of the policy: every object a kept restore point needs, the newest full of a
    source, anything younger than --grace, anything a read lease names, damaged objects (reported).
    A source with no policy and no flags is refused (exit 2), never emptied.  Holds the exclusive
    lease leases/prune/repository (another forget or prune running: exit 6)."""
    from drkit import ops
    from drkit.cli.main import emit
    from drkit.config import validate_section
    from drkit.retention.forget import forget as run
    from drkit.retention.forget import grace_of
    from drkit.retention.policy import RetentionPolicy

    given = {k: v for k, v in rules.items() if v is not None}
    try:
        override = validate_section(RetentionPolicy, given, ()) if given else None
    except ConfigError as exc:  # name the flag, not the setting
        raise ConfigError(re.sub(r"^(\w+): ", lambda m: f"--{m.group(1).replace('_', '-')}: ", str(exc),
                                 flags=re.MULTILINE)) from None
    config = app.config
    results = run(config, ops.open_repository(config), source, override=override, grace=grace_of(grace),
                  dry_run=dry_run)
    data = {"dry_run": dry_run, "sources": [r.as_dict(dry_run) for r in results]}
    lines: list[str] = []
    verb = "would remove" if dry_run else "removed"
    for r in results:
        p = r.plan
        lines.append(f"source {r.source}: policy {r.policy.describe()}")
        for mid, why in p.remove_manifests:
            lines.append(f"  {verb} backup {mid}: {why}")
        if p.remove_logs:
            names = [n for n, _ in p.remove_logs]
            lines.append(f"  {verb} {len(names)} log record(s) {names[0]} .. {names[-1]}: {p.remove_logs[0][1]}")
        for pt, why in p.kept_points:
            lines.append(f"  keep {pt.kind} point {pt.describe()}: {'; '.join(why)}")
        lines.append(f"  keep {len(p.keep_manifests)} backup(s), {len(p.keep_logs)} log record(s)")
        for a, b in p.unreachable:
            span = a.isoformat() if a == b else f"{a.isoformat()} .. {b.isoformat()}"
            lines.append(f"  {'would become' if dry_run else 'now'} unreachable: {span}")
        if not p.unreachable:
            lines.append("  no restorable time becomes unreachable")
        for d in r.damaged:
            lines.append(f"  DAMAGED (kept, not removed) {d['kind']} {d['object']}: {d['error']}")
    emit(data, as_json, "\n".join(lines))
