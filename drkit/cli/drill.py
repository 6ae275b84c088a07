"""``drkit drill SOURCE``: a DR drill (drkit/drills/run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from drkit.cli.main import AppContext
    from drkit.scheduling.policy import DrillSpec


@click.command()
@click.argument("source")
@click.option("--point-in-time", "point_in_time", metavar="TIME", help="Restore this time (ISO 8601) instead of "
              "the latest state.")
@click.option("--latest", is_flag=True, help="Restore the latest state (the default).")
@click.option("--rpo-target", metavar="DURATION", help="RPO target (e.g. 15m, 90s; default: the source's policy "
              "in schedules/, else 15 min).")
@click.option("--rto-target", metavar="DURATION", help="RTO target (e.g. 4h; default: the policy's, else 4 h).")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), help="Where the scratch "
              "directory goes (default: the system's temporary directory).")
@click.option("--keep", is_flag=True, help="Leave the scratch directory (the instance is stopped either way).")
@click.option("--schedules", "schedules", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="The policies' directory, for the targets and the source's checks (default: schedules/ "
              "next to the configuration file, when it exists).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Also write the drill's report into DIR: ID.json, ID.md and a self-contained ID.html.")
@click.option("--look-back", "look_back", metavar="DURATION", default="7d", show_default=True,
              help="Also report the RPO over this much of the repository's history (worst, p95; '0s' for none).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def drill(app: AppContext, source: str, point_in_time: str | None, latest: bool, rpo_target: str | None,
          rto_target: str | None, workdir: Path | None, keep: bool, schedules: Path | None, report_dir: Path | None,
          look_back: str, as_json: bool) -> None:
    """Restore SOURCE into a scratch instance, check that it serves, run the checks its policy
    declares (drills: SOURCE: checks), and measure the achieved RPO (now minus the newest
    restorable time) and RTO (start to a checked, serving instance) against the targets. The
    instance is stopped and removed afterwards; the result is stored in the repository
    (drills/SOURCE/ID). Exits 13 when a target is missed, a check fails or the drill fails."""
    from drkit.cli.main import emit, parse_time
    from drkit.drills.run import run_drill
    from drkit.errors import ConfigError

    if latest and point_in_time:
        raise ConfigError("--latest and --point-in-time exclude each other")
    rpo, rto, spec = _targets(app, source, rpo_target, rto_target, schedules)
    window = 0.0 if look_back.strip() in ("0", "0s", "0m", "0h", "0d") else _duration(look_back, "--look-back")
    report = run_drill(app.config, source, point_in_time=parse_time(point_in_time) if point_in_time else None,
                       rpo_target=rpo, rto_target=rto, workdir=workdir, keep=keep, spec=spec, look_back=window)
    lines = [f"drill {report.id} of {source} ({report.datastore}): {'PASSED' if report.passed else 'FAILED'}",
             f"  RPO {_s(report.rpo_seconds)} (target {_s(report.targets['rpo_seconds'])}; newest restorable "
             f"time {report.newest_safe_time})",
             f"  RTO {_s(report.rto_seconds)} (target {_s(report.targets['rto_seconds'])}): "
             + ", ".join(f"{k} {v:.2f} s" for k, v in report.phases.items())]
    lb = report.rpo_lookback
    if lb and lb.get("worst_seconds") is not None:
        lines.append(f"  RPO over the last {_s(lb['window_seconds'])}: worst {_s(lb['worst_seconds'])} (at "
                     f"{lb['worst_at']}), p95 {_s(lb['p95_seconds'])}, median {_s(lb['median_seconds'])}"
                     + (" (upper bounds: history thinned)" if lb.get("upper_bound") else ""))
    if report.restored_to:
        lines.append(f"  restored backup {report.backup} to {report.restored_to}")
    lines += [f"  check {c['name']}: {'ok' if c['ok'] else 'FAILED'} {c['detail']}" for c in report.checks]
    if report.app is not None:
        a = report.app
        lines.append(f"  app {a['command'][0]}: " + (f"{a.get('end')}, exit code {a.get('exit_code')}"
                                                      if a.get("started") else str(a.get("error"))))
    lines += [f"  failure: {f}" for f in report.failures]
    lines.append(f"  stored as {report.stored_as}")
    data = report.as_dict()
    if report_dir is not None:
        from drkit.drills.report import coverage_of, write_drill_report

        written = write_drill_report(data, report_dir, coverage_of(app.config, source))
        data["report_files"] = [str(p) for p in written]
        lines.append(f"  report: {', '.join(data['report_files'])}")
    emit(data, as_json, "\n".join(lines))
    if not report.passed:
        raise SystemExit(13)


def _s(v: float | None) -> str:
    return "unbounded" if v is None else f"{v:.1f} s"


def _duration(text: str, flag: str) -> float:
    from drkit.errors import ConfigError
    from drkit.scheduling.policy import _span

    try:
        return _span(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _targets(app: AppContext, source: str, rpo: str | None, rto: str | None,
             schedules: Path | None = None) -> tuple[float | None, float | None, DrillSpec | None]:
    """The flags, else the source's policy in schedules/ (when there is one), else the defaults;
    and the source's checks from that policy (``--schedules DIR`` must exist when given)."""
    from drkit.errors import ConfigError
    from drkit.scheduling.policy import _span, load_policies, policy_of, schedules_dir

    def parse(text: str | None, flag: str) -> float | None:
        if text is None:
            return None
        try:
            return _span(text)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None

    got = [parse(rpo, "--rpo-target"), parse(rto, "--rto-target")]
    spec = None
    directory = schedules if schedules is not None else (schedules_dir(app.config) if app.config.path else None)
    if directory is not None and (schedules is not None or directory.is_dir()):
        p = policy_of(load_policies(directory, app.config), source)
        if p is not None:
            got = [got[0] or p.targets.rpo, got[1] or p.targets.rto]
            spec = p.drills.get(source)
        elif schedules is not None:
            raise ConfigError(f"no policy in {directory} names source {source!r} (add it to a policy's sources, "
                              "or leave out --schedules)")
    return got[0], got[1], spec


@click.group(name="plan")
def plan_group() -> None:
    """Plans: what an operation would do, before it does it."""


@plan_group.command("restore")
@click.argument("source")
@click.option("--point-in-time", "point_in_time", metavar="TIME", help="The time to restore (default: the latest "
              "state).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def plan_restore_cmd(app: AppContext, source: str, point_in_time: str | None, as_json: bool) -> None:
    """Which full and log range a restore of SOURCE would read, how many bytes, and the RTO to
    expect (from the throughput this source's drills measured; a stated default before any)."""
    from drkit import ops
    from drkit.cli.main import emit, parse_time
    from drkit.drills.plan import plan_restore

    plan = plan_restore(app.config, ops.open_repository(app.config), source,
                        parse_time(point_in_time) if point_in_time else None)
    text = (f"restore of {source} to {plan['point_in_time']}{' (latest)' if plan['latest'] else ''}:\n"
            f"  backup {plan['backup']} ({', '.join(plan['manifests'])}) and {plan['log_records']} log record(s)\n"
            f"  bytes to fetch: {plan['bytes'] / 1e6:.1f} MB ({plan['log_bytes'] / 1e6:.1f} MB of log to replay)\n"
            f"  predicted RTO: {plan['predicted_rto_seconds']:.0f} s ({plan['basis']})")
    emit(plan, as_json, text)
