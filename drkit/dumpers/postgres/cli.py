"""``drkit pg ...``: the archive_command and restore_command."""

from __future__ import annotations

import sys
from pathlib import Path

import click


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
    """
    from .wal import wal_push

    repo, dumper = _setup(app, source)
    status, _meta = wal_push(repo, source, dumper.options, path)
    click.echo(f"{path.name}: {status}", err=True)


@pg_group.command("wal-fetch")
@click.option("--source", required=True, help="Source name in the configuration.")
@click.argument("walname")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_obj
def wal_fetch_cmd(app, source: str, walname: str, dest: Path) -> None:  # noqa: ANN001
    """Fetch one archived WAL file (use as restore_command ... %f %p).

    Exits 1 when the file is not archived (PostgreSQL then ends recovery there).
    """
    from .wal import fetch_from_spool, wal_fetch

    if fetch_from_spool(walname, dest):
        return
    repo, _dumper = _setup(app, source)
    if not wal_fetch(repo, source, walname, dest):
        click.echo(f"drkit: {walname} is not in the archive of {source}", err=True)
        sys.exit(1)
