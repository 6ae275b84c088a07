"""``drkit prune``: a thin wrapper over :func:`drkit.prune.prune` (registered by drkit/cli/main.py)."""

from __future__ import annotations

import json

import click


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Show what would be marked and deleted (and the repack candidates); change nothing.")
@click.option("--grace", default="24h", show_default=True,
              help="Delete only packs marked unreferenced at least this long ago (e.g. 24h, 30m; 0 marks and "
                   "deletes in one run, refused while a writer holds a lease).")
@click.option("--max-repack-size", default=None, help="Report repack candidates up to this many bytes in all (e.g. 2G; repacking itself is not implemented yet).")
@click.option("--repack-threshold", type=float, default=0.5, show_default=True,
              help="Packs whose live share is below this are repack candidates (reported; repacking is not "
                   "implemented yet).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def prune(app: object, dry_run: bool, grace: str, max_repack_size: str | None, repack_threshold: float,
          as_json: bool) -> None:
    """Garbage-collect packs no backup or log record references: mark, wait out --grace, delete.

    Refuses (exit 5) if any manifest or log record cannot be read or the storage listing looks
    incomplete; exit 6 if another prune or forget runs.  Objects the storage refuses to delete
    (S3 Object Lock) are reported as kept.
    """
    from drkit import ops
    from drkit import prune as prune_mod

    delay = prune_mod.parse_duration(grace)
    limit = prune_mod.parse_size(max_repack_size) if max_repack_size is not None else None
    repo = ops.open_repository(app.config)  # type: ignore[attr-defined]
    report = prune_mod.prune(repo, grace=delay, dry_run=dry_run, repack_threshold=repack_threshold,
                             max_repack_size=limit)
    click.echo(json.dumps(report.as_dict(), indent=2, default=str) if as_json else report.text())
