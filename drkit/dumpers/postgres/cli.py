"""``drkit pg ...``: the archive_command and restore_command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

WAL_FETCH_ABORT = 255


@click.group(name="pg")
def pg_group() -> None:
    """PostgreSQL-specific commands (WAL archiving)."""


def _setup(app, source: str):  # noqa: ANN001, ANN202
    from drkit import ops
    from drkit.dumpers import dumper_for

    dumper = dumper_for(app.config, source)
    return ops.open_repository(app.config), dumper


@pg_group.command("wal-push")
@click.option("--source", required=True, help="Source name in the configuration.")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_obj
def wal_push_cmd(app, source: str, path: Path) -> None:  # noqa: ANN001
    """Archive one WAL file (use as archive_command ... %p).

    Re-pushing an identical file succeeds; a different file under an archived name fails.
    When more files wait in pg_wal/archive_status, a detached pusher (one per repository and
    source) archives them in parallel, a marker for each once it is committed, and their own
    archive_command calls for this repository and source then return at once.
    """
    import threading

    from .wal import (
        claim_foreground,
        destination_of,
        has_marker,
        peek_destination,
        push_ahead,
        pushed_ahead,
        spawn_pusher,
        wait_for_pusher,
        wal_push,
    )

    if has_marker(path, source):
        # Fast path without the key: the repository id comes from its plaintext config object.
        from drkit.storage import open_storage

        dest = peek_destination(open_storage(app.config.repository.url, app.config.repository.s3, retry=False),
                                source)
        if dest is not None:
            claim_foreground(path, dest)
            if pushed_ahead(path, dest):
                click.echo(f"{path.name}: already archived (pushed ahead)", err=True)
                return
    repo, dumper = _setup(app, source)
    dest = destination_of(repo, source)
    claim_foreground(path, dest)
    if wait_for_pusher(path, dest) and pushed_ahead(path, dest):
        click.echo(f"{path.name}: already archived (pushed ahead)", err=True)
        return
    status, _meta = wal_push(repo, source, dumper.options, path)
    click.echo(f"{path.name}: {status}", err=True)

    def open_repo():  # noqa: ANN202 - in the pusher process
        repo, dumper = _setup(app, source)
        return repo, dumper.options

    if threading.active_count() > 1:
        # Forking a threaded process is unsafe: archive the next files here, in this call.
        ahead = push_ahead(repo, source, dumper.options, path)
        if ahead:
            click.echo(f"also archived ahead: {', '.join(ahead)}", err=True)
    elif spawn_pusher(open_repo, source, path):
        click.echo("pusher started for the files waiting after it", err=True)


@pg_group.command("wal-fetch")
@click.option("--source", required=True, help="Source name in the configuration.")
@click.option("--until", "until", metavar="SEGMENT",
              help="Serve no WAL segment after this one (restores of one backup use it).")
@click.argument("walname")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_obj
def wal_fetch_cmd(app, source: str, until: str | None, walname: str, dest: Path) -> None:  # noqa: ANN001
    """Fetch one archived WAL file (use as restore_command ... %f %p).

    Exits 1 when the file is not archived (PostgreSQL then ends recovery there) and 255 on any
    other failure (corrupt object, storage down, wrong key), which makes PostgreSQL abort
    recovery rather than promote a server that is missing data.
    """
    from .wal import beyond, fetch_from_spool, wal_fetch

    if until and beyond(walname, until):
        click.echo(f"drkit: {walname} is after {until}, the end of the planned restore", err=True)
        sys.exit(1)
    try:
        if fetch_from_spool(walname, dest):
            return
        repo, _dumper = _setup(app, source)
        found = wal_fetch(repo, source, walname, dest, prefetch=0 if until else 8)
    except Exception as exc:  # noqa: BLE001 - every failure must abort recovery, see below
        # Exit 1 tells PostgreSQL "not archived": it would end recovery and promote with data
        # missing.  Any real failure must abort recovery instead, which PostgreSQL does for an
        # exit status above 125.
        click.echo(f"drkit: error: fetching {walname} failed, aborting recovery: {exc}", err=True)
        sys.exit(WAL_FETCH_ABORT)
    if not found:
        click.echo(f"drkit: {walname} is not in the archive of {source}", err=True)
        sys.exit(1)


@pg_group.command("receive")
@click.option("--source", required=True, help="Source name in the configuration.")
@click.option("--dir", "spool", type=click.Path(path_type=Path, file_okay=False),
              help="pg_receivewal's spool directory (default: $DRKIT_STATE_DIR or ~/.local/state/drkit, "
                   "then pg-receive/SOURCE). Keep it across restarts.")
@click.option("--seal-seconds", type=float, default=5.0, show_default=True,
              help="Seal the segment being received this often: the RPO while receiving.")
@click.option("--synchronous", is_flag=True, help="Flush and acknowledge every write at once (for "
              "synchronous_standby_names: a commit returns only once the receiver has it).")
@click.option("--slot", help="Physical replication slot to stream from (created if missing; default drkit_SOURCE).")
@click.option("--duration", type=float, help="Stop after this many seconds (default: until SIGTERM/SIGINT).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at exit.")
@click.pass_obj
def receive_cmd(app, source: str, spool: Path | None, seal_seconds: float, synchronous: bool,  # noqa: ANN001
                slot: str | None, duration: float | None, as_json: bool) -> None:
    """Stream SOURCE's WAL over the replication protocol (pg_receivewal on a replication slot)
    and seal it into the repository every --seal-seconds, so the RPO is seconds whatever
    archive_timeout is. Complete segments are stored as archive_command stores them (one copy
    whichever comes first); the segment being written is sealed as a partial copy that restores
    use for the last seconds. Seals at once when the connection drops (and reconnects) and on
    SIGTERM/SIGINT (then exits 0). One receiver per source (exit 6 while another holds its lease).
    """
    import json
    import logging
    import os
    import threading

    from drkit.proc import install_stop_handlers

    from .receive import Receiver

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    repo, dumper = _setup(app, source)
    if dumper.datastore != "postgres":
        raise click.ClickException(f"source {source} is not a postgres source")
    if spool is None:
        base = Path(os.environ.get("DRKIT_STATE_DIR") or Path.home() / ".local" / "state" / "drkit")
        spool = base / "pg-receive" / source
    stop = threading.Event()
    install_stop_handlers(stop)
    receiver = Receiver(repo, source, dumper.options, spool, seal_seconds=seal_seconds, synchronous=synchronous,
                        slot=slot, stop=stop)
    report = receiver.run(duration=duration)
    summary = {"source": source, "spool": str(spool), "slot": receiver.slot, "segments": report.segments,
               "seals": report.seals, "restarts": report.restarts, "last_seal": report.last_seal,
               "errors": report.errors}
    click.echo(json.dumps(summary, indent=2) if as_json else
               f"received {source}: {report.segments} segments, {report.seals} seals, {report.restarts} reconnects")
