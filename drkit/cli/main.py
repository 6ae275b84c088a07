"""``drkit`` -- the command line entry point."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from drkit import __version__
from drkit.errors import EXIT_CODES, ConfigError, DrkitError

EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>2}  {what}" for what, code in EXIT_CODES.items())


class AppContext:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config = None

    @property
    def config(self):  # noqa: ANN201 - Config
        if self._config is None:
            from drkit.config import load_config

            self._config = load_config(self.config_path)
        return self._config


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text if text is not None else json.dumps(data, indent=2, default=str))


def parse_time(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--point-in-time {value!r} is not an ISO 8601 time (e.g. 2026-11-26T14:05:00Z)") from None
    if dt.tzinfo is None:
        raise ConfigError(f"--point-in-time {value!r} has no time zone; add Z or +HH:MM so it is unambiguous")
    return dt.astimezone(UTC)


@click.group(epilog=EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DRKIT_CONFIG",
              help="Configuration file (YAML). Default: $DRKIT_CONFIG.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="drkit")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """drkit: encrypted, deduplicated backups with point-in-time restore and measured RPO/RTO."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = AppContext(config_path)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def init(app: AppContext, as_json: bool) -> None:
    """Create the repository and wrap its new master key with the configured key."""
    from drkit import ops

    repo = ops.init_repository(app.config)
    data = {"repository": repo.storage.url, "id": repo.id, "key_id": repo.key_id}
    emit(data, as_json, f"created repository {repo.id} at {repo.storage.url}")


@cli.command()
@click.argument("source")
@click.option("--type", "backup_type", type=click.Choice(["full", "incremental", "logical"]), default="full",
              show_default=True, help="What kind of backup to take.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def backup(app: AppContext, source: str, backup_type: str, as_json: bool) -> None:
    """Back up SOURCE and commit it to the repository."""
    from drkit import ops

    result = ops.backup(app.config, source, backup_type)
    m = result.manifest
    text = (
        f"backup {m.id} of {source} ({m.type}) committed: {m.size / 1e6:.1f} MB read, "
        f"{m.stored_bytes / 1e6:.1f} MB stored, {result.seconds:.1f} s"
    )
    emit(result.as_dict(), as_json, text)


@cli.command(name="list")
@click.argument("source", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_cmd(app: AppContext, source: str | None, as_json: bool) -> None:
    """List backups and the recoverable window of each source."""
    from drkit import ops

    data = ops.list_sources(app.config, source)
    if as_json:
        emit(data, True)
        return
    for entry in data:
        win = entry.get("window")
        click.echo(f"source {entry['source']} ({entry.get('type')})")
        if win:
            click.echo(f"  recoverable window: {win['start']} .. {win['end']}")
            if len(entry.get("windows", [])) > 1:
                for w in entry["windows"]:
                    click.echo(f"    part: {w['start']} .. {w['end']}")
        else:
            click.echo("  recoverable window: none")
        if entry.get("current_rpo_seconds") is not None:
            click.echo(f"  newest recoverable commit: {entry['current_rpo_seconds']:.0f} s ago "
                       "(the data at risk if the source were lost now, on a busy database)")
        for gap in entry.get("gaps", []):
            first, last = gap["unreachable_logs"]["first"], gap["unreachable_logs"]["last"]
            past = f"; {gap['unreachable_logs']['count']} log record(s) after it unreachable ({first} .. {last})" \
                if first else ""
            click.echo(f"  {gap['state'].upper().replace('_', ' ')}: {gap['missing']} in the chain of {gap['chain']}"
                       f"{' is DAMAGED' if gap.get('damaged') else ''}{past}; newest point before it: "
                       f"{gap['newest_reachable']}")
        for d in entry.get("damaged", []):
            click.echo(f"  DAMAGED {d['kind']} {d['object']}: {d['error']}")
        for note in entry.get("notes", []):
            if not note.startswith(("gap in the chain", "in_flight in the chain", "damaged: ")):
                click.echo(f"  note: {note}")
        for b in entry["backups"]:
            click.echo(f"  {b['id']}  {b['type']:<8} finished {b['finished']}  {b['size'] / 1e6:10.1f} MB  stored {b['stored_bytes'] / 1e6:.1f} MB")


@cli.command()
@click.argument("source")
@click.option("--backup", "backup_id", help="Restore this backup (as of its end); with --point-in-time: "
              "use this backup as the base instead of the newest one covering the time.")
@click.option("--point-in-time", "pit", help="Restore to this time (ISO 8601 with zone, e.g. 2026-11-26T14:05:00Z).")
@click.option("--target-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Empty or new directory to restore into (required except for redis --to).")
@click.option("--start", is_flag=True, help="Start the restored server and wait until it serves.")
@click.option("--port", type=int, help="Port for the restored server (default: a free one).")
@click.option("--wait-in-flight", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Latest-state restores: seconds to wait for log records still in flight (pushed out of "
              "order) before refusing with the hole named.")
@click.option("--no-sync", is_flag=True, help="Return without waiting for the restored files to reach the disk: "
              "faster, but an OS crash soon after can leave them corrupt (as pg_basebackup --no-sync).")
@click.option("--keep-archiving", is_flag=True, help="Keep archive_mode from the backup (default: off, so a restored copy never archives into the production source).")
@click.option("--into-dsn", help="Logical backups: pg_restore each database into this server.")
@click.option("--database", help="Logical backups: only this database.")
@click.option("--to", "to_url", help="Redis: load into this running, empty instance (redis://host:port) instead of a directory.")
@click.option("--to-password-env", help="Redis --to: name of the environment variable holding the target's password.")
@click.option("--flush", is_flag=True, help="Redis --to: delete the target's data first (refused without it if not empty).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def restore(app: AppContext, source: str, backup_id: str | None, pit: str | None, target_dir: Path | None,
            start: bool, port: int | None, wait_in_flight: float, no_sync: bool, keep_archiving: bool, into_dsn: str | None,
            database: str | None, to_url: str | None, to_password_env: str | None, flush: bool,
            as_json: bool) -> None:
    """Restore SOURCE: the latest state, one backup, or a point in time."""
    from drkit import ops
    from drkit.dumpers import RestoreRequest

    request = RestoreRequest(
        source=app.config.source(source), target_dir=target_dir.absolute() if target_dir else None,
        backup_id=backup_id, point_in_time=parse_time(pit) if pit else None, start=start, port=port,
        sync=not no_sync, wait_in_flight=wait_in_flight, options={"keep_archiving": keep_archiving, "into_dsn": into_dsn, "database": database,
                 "to": to_url, "to_password_env": to_password_env, "flush": flush},
    )
    result = ops.restore(app.config, request)
    data = {
        "source": result.source, "backup": result.backup_id,
        "target_dir": str(result.target_dir) if result.target_dir else None,
        "point_in_time": result.point_in_time.isoformat() if result.point_in_time else None,
        "phases_seconds": {k: round(v, 3) for k, v in result.phases.items()},
        "seconds": round(result.seconds, 3), **result.details,
    }
    into = result.target_dir or to_url
    lines = [f"restored {source} from backup {result.backup_id} into {into} ({result.seconds:.1f} s)"]
    lines += [f"  {k}: {v:.2f} s" for k, v in result.phases.items()]
    if "socket_dir" in result.details:
        lines.append(f"  serving on port {result.details['port']} (socket dir {result.details['socket_dir']})")
    elif "url" in result.details:
        lines.append(f"  serving at {result.details['url']} (pid {result.details['pid']})")
    if "keys" in result.details:
        lines.append(f"  keys restored: {result.details['keys']} (expired by then, not restored: "
                     f"{result.details.get('keys_expired_by_then', 0)})")
    emit(data, as_json, "\n".join(lines))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(app: AppContext, as_json: bool) -> None:
    """Read back every backup and log segment: every chunk must decrypt and hash right."""
    from drkit import verify as verify_mod

    report = verify_mod.verify_repository(app.config)
    emit(report.as_dict(), as_json, report.text())
    if report.problems:
        raise SystemExit(5)


from drkit.cli.keys import key  # noqa: E402 - the key group lives in drkit/cli/keys.py

cli.add_command(key)


def _register_plugins() -> None:
    from drkit.dumpers import available_dumpers
    from drkit.sandbox.cli import sandbox

    if "sandbox" not in cli.commands:
        cli.add_command(sandbox)

    for _name, cls in available_dumpers().items():
        group = cls.cli_group()
        if group is not None and group.name not in cli.commands:
            cli.add_command(group)


def main(argv: list[str] | None = None) -> None:
    try:
        _register_plugins()
        cli.main(args=argv, prog_name="drkit", standalone_mode=False)
    except DrkitError as exc:
        click.echo(f"drkit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("drkit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback unless -vv
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"drkit: unexpected error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
