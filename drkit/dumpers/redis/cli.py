"""``drkit redis ...``: the long-running follower that records the replication stream."""

from __future__ import annotations

import json
import logging
import threading

import click


@click.group(name="redis")
def redis_group() -> None:
    """Redis-specific commands (continuous incrementals)."""


@redis_group.command("follow")
@click.argument("source")
@click.option("--slice-seconds", type=float, help="Seal a slice this often (default: the source's "
              "slice_seconds, 60). The RPO while following is about this long.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until SIGTERM/SIGINT).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at exit.")
@click.pass_obj
def follow_cmd(app, source: str, slice_seconds: float | None, duration: float | None, as_json: bool) -> None:  # noqa: ANN001
    """Follow SOURCE like a replica and record its command stream into the repository.

    The first run (or a full resync) stores a base snapshot; then every command is recorded with
    its receipt time and sealed into a slice every --slice-seconds. A dropped link is resumed
    with PSYNC (no gap) or, if the primary cannot continue, a new chain starts from a new
    snapshot (logged as FULL RESYNC). SIGTERM seals the current slice and exits 0. Only offsets
    sealed in the repository are acknowledged, so 'WAIT 1 <ms>' on the primary means "in the
    backup". One follower per source: a second one is refused (exit 6) while the first holds
    its lease in the repository.
    """
    from drkit import ops
    from drkit.dumpers import dumper_for

    from .follow import Follower, install_stop_handlers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dumper = dumper_for(app.config, source)
    if dumper.datastore != "redis":
        raise click.ClickException(f"source {source} is not a redis source")
    stop = threading.Event()
    install_stop_handlers(stop)
    follower = Follower(ops.open_repository(app.config), source, dumper.options, slice_seconds=slice_seconds,
                        stop=stop)
    report = follower.run(duration=duration)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else
               f"followed {source}: {report.slices} slices, {report.commands} commands, "
               f"{report.partial_resyncs} partial / {report.full_resyncs} full resyncs")
