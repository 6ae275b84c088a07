"""``drkit schedule ...``: policies in ``schedules/*.yaml``, checked (lint) and run (due)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from drkit.errors import DrkitError

if TYPE_CHECKING:
    from drkit.cli.main import AppContext
    from drkit.repository import Repository
    from drkit.scheduling.due import DueReport


class ObjectiveMissed(DrkitError):
    """A policy (or drill) does not meet its RPO/RTO target."""

    exit_code = 13


_SCHEDULES = click.option("--schedules", "schedules", type=click.Path(path_type=Path, file_okay=False),
                          help="The policies' directory (default: schedules/ next to the configuration file).")


def _push_options(f):  # noqa: ANN001, ANN202 - a decorator
    f = click.option("--instance", help="The push's 'instance' grouping label (default: the sources, "
                     "comma-joined, or 'all'). A push replaces its group's metrics.")(f)
    f = click.option("--job", "push_job", default="drkit", show_default=True,
                     help="The push's 'job' grouping label.")(f)
    f = click.option("--push", "push_url", metavar="URL", help="Push the metrics to this Prometheus Pushgateway "
                     "(basic auth: $DRKIT_PUSHGATEWAY_USER / $DRKIT_PUSHGATEWAY_PASSWORD).")(f)
    return f


@click.group()
def schedule() -> None:
    """Schedule policies: check that they meet their targets, run what is due."""


@schedule.command()
@_SCHEDULES
@click.option("--offline", is_flag=True, help="Do not ask the servers for their settings (e.g. archive_timeout).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def lint(app: AppContext, schedules: Path | None, offline: bool, as_json: bool) -> None:
    """Compute each policy's worst-case RPO from what it really captures; exit 13 when a policy
    cannot meet its own RPO target (the arithmetic and the fix are printed)."""
    from drkit.cli.main import emit
    from drkit.scheduling.lint import lint as run
    from drkit.scheduling.policy import load_policies, schedules_dir

    config = app.config
    policies = load_policies(schedules_dir(config, schedules), config)
    durations = _durations(app, [s for p in policies for s in p.sources]) if not offline else {}
    findings = run(config, policies, live=not offline, durations=durations)
    emit({"findings": [f.as_dict() for f in findings], "ok": all(f.ok for f in findings)}, as_json,
         "\n".join(f.text() for f in findings))
    failed = [f for f in findings if not f.ok]
    if failed:
        raise ObjectiveMissed(f"{len(failed)} of {len(findings)} source schedule(s) cannot meet their RPO target: "
                              + ", ".join(f"{f.policy}/{f.source}" for f in failed))


def _durations(app: AppContext, sources: list[str]) -> dict[str, float]:
    """The newest full backup's duration per source, from the repository (empty if it cannot be opened)."""
    from drkit import ops
    from drkit.repository.manifest import parse_iso

    try:
        repo = ops.open_repository(app.config)
    except DrkitError:
        return {}
    out = {}
    for s in sources:
        fulls = [m for m in repo.list_manifests(s) if m.type == "full"]
        if fulls:
            m = max(fulls, key=lambda m: m.started)
            out[s] = (parse_iso(m.finished) - parse_iso(m.started)).total_seconds()
    return out


@schedule.command(name="run")
@_SCHEDULES
@click.option("--listen", default="127.0.0.1:9464", show_default=True, metavar="HOST:PORT",
              help="Serve /metrics and /health here ('' to serve nothing).")
@click.option("--no-followers", is_flag=True, help="Do not start the followers continuous policies ask for.")
@click.option("--no-jobs", is_flag=True, help="Run no jobs: supervise the followers and serve /metrics only "
              "(when the jobs run as cron jobs or Kubernetes CronJobs, see 'drkit k8s render').")
@click.option("--wait", type=float, default=600.0, show_default=True,
              help="Seconds a job waits for its source's previous run (job lease).")
@click.option("--stop-timeout", type=float, default=300.0, show_default=True,
              help="On SIGTERM, seconds a running job gets to finish.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: until SIGTERM/SIGINT).")
@click.pass_obj
def run_cmd(app: AppContext, schedules: Path | None, listen: str, no_followers: bool, no_jobs: bool, wait: float,
            stop_timeout: float, duration: float | None) -> None:
    """The scheduler daemon: runs each policy's jobs on their cron triggers (what ran is read from
    the repository, so a restarted or second daemon never runs a job twice), catches up once on
    start, supervises the followers of continuous policies, and serves /metrics and /health."""
    import logging
    import threading

    from drkit.errors import ConfigError
    from drkit.proc import install_stop_handlers
    from drkit.scheduling.daemon import Daemon
    from drkit.scheduling.policy import load_policies, schedules_dir

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger().setLevel(logging.INFO)  # a daemon's log is its record of what it did
    config = app.config
    policies = load_policies(schedules_dir(config, schedules), config)
    where = None
    if listen:
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"--listen {listen!r}: expected HOST:PORT")
        where = (host or "127.0.0.1", int(port))
    daemon = Daemon(config, policies, config_path=str(config.path) if config.path else None, wait=wait,
                    stop_timeout=stop_timeout, listen=where, followers=not no_followers, jobs=not no_jobs)
    stop = threading.Event()
    install_stop_handlers(stop, "no new job starts; the running one may finish")
    threading.Thread(target=lambda: (stop.wait(), daemon.stopping.set()), daemon=True).start()
    state = daemon.run(duration=duration)
    click.echo(f"scheduler stopped after {state.runs} run(s)")


@schedule.command()
@click.argument("sources", nargs=-1)
@_SCHEDULES
@click.option("--wait", type=float, default=600.0, show_default=True,
              help="Seconds to wait for a source's previous run (its job lease) before exiting 6.")
@click.option("--no-retention", is_flag=True, help="Do not run the policies' retention (forget) afterwards.")
@click.option("--textfile", type=click.Path(dir_okay=False), help="Afterwards, write the metrics of these "
              "sources (with this run's job exit codes and lock waits) to this node-exporter textfile.")
@_push_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def due(app: AppContext, sources: tuple[str, ...], schedules: Path | None, wait: float, no_retention: bool,
        textfile: str | None, push_url: str | None, push_job: str, instance: str | None, as_json: bool) -> None:
    """Run what is due now for SOURCES (default: every scheduled source), once, then the
    policies' retention -- for cron and Kubernetes CronJobs.

    What ran is read from the repository (any pod can run this). A full or incremental job is
    due when none has run since its cron expression last fired (a run missed during downtime runs
    once). For continuous log shipping the incremental job checks that shipping is current.
    Exits non-zero when a job failed (its exit code), 6 when a source's previous run still held
    its lease after --wait. With --push/--textfile the metrics are pushed/written afterwards, also
    when a job failed (10 when the Pushgateway cannot be reached and no job failed).
    """
    from drkit import ops
    from drkit.cli.main import emit
    from drkit.scheduling.due import due as run
    from drkit.scheduling.policy import load_policies, schedules_dir

    config = app.config
    policies = load_policies(schedules_dir(config, schedules), config)
    known = {s for p in policies for s in p.sources}
    unknown = [s for s in sources if s not in known]
    if unknown:
        from drkit.errors import ConfigError

        raise ConfigError(f"no policy schedules {', '.join(unknown)} (scheduled: {', '.join(sorted(known))})")
    repo = ops.open_repository(config)
    report = run(config, repo, policies, list(sources) or None, wait=wait, retention=not no_retention)
    lines = [f"{j.policy}: {j.source} {j.job}: {j.action}" + (f" ({j.detail})" if j.detail else "")
             for j in report.jobs]
    lines += [f"retention {r['source']}: " + (r.get("skipped") or r.get("failed") or
                                              f"{len(r.get('removed', {}).get('manifests', []))} backup(s) forgotten")
              for r in report.retention]
    emit(report.as_dict(), as_json, "\n".join(lines))
    if textfile or push_url:
        try:
            _publish(app, repo, sorted({j.source for j in report.jobs}), report, textfile, push_url, push_job,
                     instance)
        except DrkitError as exc:
            if not report.exit_code:
                raise
            click.echo(f"error: {exc}", err=True)  # the job's own failure is the exit code
    if report.exit_code:
        raise SystemExit(report.exit_code)


def _publish(app: AppContext, repo: Repository, sources: list[str], report: DueReport, textfile: str | None,
             push_url: str | None, push_job: str, instance: str | None) -> None:
    """The metrics of ``sources`` after a ``due`` run, with its jobs' exit codes (the worst job per source)."""
    from drkit.scheduling.metrics import add_job_results, push, registry, write_textfile

    reg = registry(app.config, repo, sources)
    last: dict[str, dict] = {}
    for j in report.jobs:
        if j.source not in last or (j.exit_code and not last[j.source]["exit_code"]):
            last[j.source] = {"job": j.job, "exit_code": j.exit_code}
    add_job_results(reg, last)
    if textfile:
        write_textfile(reg, textfile)
    if push_url:
        group = push(reg, push_url, job=push_job, sources=sources, instance=instance)
        click.echo(f"metrics pushed to {push_url.split('?')[0]} ({group})", err=True)


@click.command()
@click.argument("sources", nargs=-1)
@click.option("--textfile", type=click.Path(dir_okay=False), help="Write them to this file (atomically: a "
              "node-exporter textfile collector), instead of printing them.")
@_push_options
@click.pass_obj
def metrics(app: AppContext, sources: tuple[str, ...], textfile: str | None, push_url: str | None, push_job: str,
            instance: str | None) -> None:
    """Prometheus metrics of SOURCES (default: every configured source), computed from the
    repository: last backups, newest safe time and RPO now, log backlog, last drill, last prune.
    Printed, written to --textfile, or pushed to a Pushgateway (--push; exit 10 when it cannot be
    reached)."""
    from drkit import ops
    from drkit.scheduling.metrics import push, registry, render, write_textfile

    reg = registry(app.config, ops.open_repository(app.config), list(sources) or None)
    if textfile:
        write_textfile(reg, textfile)
    if push_url:
        group = push(reg, push_url, job=push_job, sources=list(sources) or None, instance=instance)
        click.echo(f"metrics pushed to {push_url.split('?')[0]} ({group})", err=True)
    if not textfile and not push_url:
        click.echo(render(reg), nl=False)
