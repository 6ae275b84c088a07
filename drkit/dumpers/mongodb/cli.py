"""``drkit mongodb ...``: the long-running oplog follower."""

from __future__ import annotations

import json
import logging
import threading

import click


@click.group(name="mongodb")
def mongodb_group() -> None:
    """MongoDB-specific commands (continuous oplog incrementals)."""


@mongodb_group.command("follow")
@click.argument("source")
@click.option("--slice-seconds", type=float, help="Seal a slice this often (default: the source's slice_seconds, "
              "60). The RPO while following is about this long.")
@click.option("--slice-mib", type=int, help="... or as soon as it holds this many MiB (default: slice_mib, 64).")
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until SIGTERM/SIGINT).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at exit.")
@click.pass_obj
def follow_cmd(app, source: str, slice_seconds: float | None, slice_mib: int | None, duration: float | None,  # noqa: ANN001
               as_json: bool) -> None:
    """Tail SOURCE's oplog and record it into the repository as slices.

    Continues from the newest captured position (the newest slice, or the newest full backup's
    end); if the oplog has rolled past it, refuses (exit 9) and asks for a full backup. Seals a
    slice every --slice-seconds or --slice-mib; an idle oplog gets heartbeat records so the
    recoverable window keeps up with the clock. SIGTERM seals the open slice and exits 0; after
    a SIGKILL the next run re-reads what was not sealed (no gap, no duplicate). One follower per
    source: a second one, or a one-shot incremental, is refused (exit 6) while it holds its lease.
    """
    from drkit import ops
    from drkit.dumpers import dumper_for
    from drkit.proc import install_stop_handlers

    from .follow import Follower

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dumper = dumper_for(app.config, source)
    if dumper.datastore != "mongodb":
        raise click.ClickException(f"source {source} is not a mongodb source")
    stop = threading.Event()
    install_stop_handlers(stop)
    follower = Follower(ops.open_repository(app.config), source, dumper.options, slice_seconds=slice_seconds,
                        slice_mib=slice_mib, stop=stop)
    report = follower.run(duration=duration)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else
               f"followed {source}: {report.slices} slices, {report.entries} oplog entries, "
               f"{report.heartbeats} heartbeats, {report.reconnects} reconnects")
