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
    When more files wait in pg_wal/archive_status, up to 8 are archived ahead in parallel and
    their own archive_command calls for this repository and source then return at once.
    """
    from .wal import has_marker, peek_destination, push_ahead, pushed_ahead, wal_push

    if has_marker(path, source):
        # Fast path without the key: the repository id comes from its plaintext config object.
        from drkit.storage import open_storage

        dest = peek_destination(open_storage(app.config.repository.url, app.config.repository.s3, retry=False),
                                source)
        if dest is not None and pushed_ahead(path, dest):
            click.echo(f"{path.name}: already archived (pushed ahead)", err=True)
            return
    repo, dumper = _setup(app, source)
    status, _meta = wal_push(repo, source, dumper.options, path)
    click.echo(f"{path.name}: {status}", err=True)
    ahead = push_ahead(repo, source, dumper.options, path)
    if ahead:
        click.echo(f"also archived ahead: {', '.join(ahead)}", err=True)


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
