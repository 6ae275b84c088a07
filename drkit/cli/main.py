"""``drkit`` -- the command line entry point."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from drkit import __version__
from drkit.errors import EXIT_CODES, ConfigError, DrkitError

if TYPE_CHECKING:
    from drkit.dumpers import Dumper
    from drkit.dumpers.options import OptionSpec

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


def _progress_wanted(as_json: bool) -> bool:
    """A progress bar on stderr: only on a terminal, and not with --json or --log-format json."""
    from drkit.progress import wanted

    root = click.get_current_context().find_root()
    return wanted(as_json=as_json, log_format=str(root.params.get("log_format") or "text"))


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
@click.option("--log-format", type=click.Choice(["text", "json"]), envvar="DRKIT_LOG_FORMAT", default="text",
              show_default=True, help="Log lines as text, or one JSON event per line (for ELK). "
              "Default: $DRKIT_LOG_FORMAT.")
@click.version_option(__version__, prog_name="drkit")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, log_format: str) -> None:
    """drkit: encrypted, deduplicated backups with point-in-time restore and measured RPO/RTO."""
    from drkit.logfmt import configure

    configure(logging.WARNING - 10 * min(verbose, 2), log_format)
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
@click.option("--type", "backup_type", metavar="TYPE",
              help="What kind of backup to take: one of the backup types of SOURCE's datastore (e.g. full, "
              "incremental, logical; default: its first, full).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def backup(app: AppContext, source: str, backup_type: str | None, as_json: bool) -> None:
    """Back up SOURCE and commit it to the repository."""
    from drkit import ops
    from drkit.dumpers import LogShipment, dumper_class
    from drkit.progress import progress

    cls = dumper_class(app.config, source)  # SOURCE's datastore first, then its backup types
    types = tuple(cls.backup_types)
    backup_type = backup_type or types[0]
    if backup_type not in types:
        raise ConfigError(f"--type {backup_type!r} is not a backup type of source {source!r} (type "
                          f"{cls.datastore}); choose one of: {', '.join(types)}")
    with progress(f"backup {source} ({backup_type})", enabled=_progress_wanted(as_json)):
        result = ops.backup(app.config, source, backup_type)
    m = result.manifest
    if not isinstance(m, LogShipment):
        text = (
            f"backup {m.id} of {source} ({m.type}) committed: {m.size / 1e6:.1f} MB read, "
            f"{m.stored_bytes / 1e6:.1f} MB stored, {result.seconds:.1f} s"
        )
    else:
        text = f"{m.text()}, {result.seconds:.1f} s"
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


DUMPER_META = "drkit.restore_dumper"  # ctx.meta: the dumper class of SOURCE, once resolved
_DUMPER_ERROR = "drkit.restore_dumper_error"  # ctx.meta: why it could not be resolved (for --help)


class SourceOptionsCommand(click.Command):
    """``restore``: the common options plus the options SOURCE's dumper declares.

    click parses every option before the callback runs (and ``--help`` is eager), so SOURCE's
    dumper must be known while parsing: :meth:`parse_args` peeks at SOURCE (the first argument
    that is not an option or an option's value), resolves its dumper from the configuration and
    records it in ``ctx.meta``; :meth:`get_params` then adds that dumper's ``restore_options``
    (as click options named by their ``dest``), so click itself parses them, refuses an undeclared
    option (exit 2) and lists them in ``--help``.  Without SOURCE (or without a loadable
    configuration, for ``--help``) only the common options exist.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built: dict[type, list[click.Option]] = {}

    def dumper_params(self, cls: type[Dumper]) -> list[click.Option]:
        """The click options of ``cls``'s declared restore options (checked once: exit 1 naming
        the problems if a dumper declares unusable ones)."""
        if cls not in self._built:
            from drkit.dumpers.options import spec_problems

            flags = [o for p in self.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)]
            problems = spec_problems(cls.restore_options, reserved_flags=[*flags, "--help", "-h"],
                                     reserved_dests=[p.name for p in self.params if p.name] + ["app"])
            if problems:
                raise DrkitError(f"the dumper of {cls.datastore!r} sources declares unusable restore options: "
                                 f"{'; '.join(problems)}")
            self._built[cls] = [_click_option(s) for s in cls.restore_options]
        return self._built[cls]

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        cls = ctx.meta.get(DUMPER_META)
        return [*params, *self.dumper_params(cls)] if cls is not None else params

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cls = self._peek_dumper(ctx, args)
        if cls is not None:
            ctx.meta[DUMPER_META] = cls
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            base = exc.message.rstrip(".")
            if cls is not None:
                own = ", ".join("/".join(s.flags) for s in cls.restore_options) or "none"
                exc.message = (f"{base} for sources of type {cls.datastore}; their own options: {own} "
                               f"('drkit {self.name} SOURCE --help' lists all).")
            else:
                exc.message = (f"{base} (the options of a datastore exist once SOURCE is given: "
                               f"'drkit {self.name} SOURCE --help' lists them).")
            raise

    def _peek_dumper(self, ctx: click.Context, args: list[str]) -> type[Dumper] | None:
        source = self._peek_source(args)
        app = ctx.find_object(AppContext)
        if source is None or app is None:
            return None
        from drkit.dumpers import dumper_class

        try:
            return dumper_class(app.config, source)
        except DrkitError as exc:
            if ctx.resilient_parsing or any(a in ctx.help_option_names for a in args):
                ctx.meta[_DUMPER_ERROR] = str(exc)  # --help still answers, with the common options
                return None
            raise

    def _peek_source(self, args: list[str]) -> str | None:
        """SOURCE: the first argument that is neither an option nor the value of one (an option of
        any installed dumper counts, so ``--to URL SOURCE`` works)."""
        from drkit.dumpers import available_dumpers

        takes_value = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag and not p.count
                       for o in (*p.opts, *p.secondary_opts)}
        takes_value.update(f for cls in available_dumpers().values() for s in cls.restore_options
                           if not s.is_flag for f in s.flags)
        it = iter(args)
        for arg in it:
            if arg == "--":
                return next(it, None)
            if not arg.startswith("-") or arg == "-":
                return arg
            if "=" not in arg and arg in takes_value:
                next(it, None)
        return None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cls = ctx.meta.get(DUMPER_META)
        own = self.dumper_params(cls) if cls is not None else []
        common = [p for p in self.get_params(ctx) if isinstance(p, click.Option) and p not in own]
        with formatter.section("Options"):
            formatter.write_dl([r for p in common if (r := p.get_help_record(ctx))])
        if cls is not None and own:
            with formatter.section(f"Options of {cls.datastore} sources"):
                formatter.write_dl([r for p in own if (r := p.get_help_record(ctx))])
            return
        formatter.write_paragraph()
        if cls is not None:
            formatter.write_text(f"Sources of type {cls.datastore} take no options of their own.")
            return
        why = ctx.meta.get(_DUMPER_ERROR)
        formatter.write_text(f"The options of SOURCE's datastore (e.g. --to, --drop, --database) appear with "
                             f"'drkit {self.name} SOURCE --help'" + (f" (not now: {why})" if why else "") + ".")


def _click_option(spec: OptionSpec) -> click.Option:
    """The click option of a dumper's declared option (its parameter name is ``spec.dest``)."""
    if spec.is_flag:
        return click.Option([*spec.flags, spec.dest], is_flag=True, default=bool(spec.default), help=spec.help)
    kind = {str: click.STRING, int: click.INT, float: click.FLOAT}.get(spec.kind) or click.Path(path_type=Path)
    return click.Option([*spec.flags, spec.dest], type=kind, default=spec.default, multiple=spec.multiple,
                        metavar=spec.metavar, help=spec.help, show_default=spec.default is not None)


@cli.command(cls=SourceOptionsCommand)
@click.argument("source")
@click.option("--backup", "backup_id", help="Restore this backup (as of its end); with --point-in-time: "
              "use this backup as the base instead of the newest one covering the time.")
@click.option("--point-in-time", "pit", help="Restore to this time (ISO 8601 with zone, e.g. 2026-11-26T14:05:00Z).")
@click.option("--target-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Empty or new directory to restore into (required unless SOURCE's datastore restores into a "
              "running server with --to).")
@click.option("--start", is_flag=True, help="Start the restored server and wait until it serves.")
@click.option("--port", type=int, help="Port for the restored server (default: a free one).")
@click.option("--wait-in-flight", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Latest-state restores: seconds to wait for log records still in flight (pushed out of "
              "order) before refusing with the hole named.")
@click.option("--no-sync", is_flag=True, help="Return without waiting for the restored files to reach the disk: "
              "faster, but an OS crash soon after can leave them corrupt (as a base backup tool's --no-sync).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def restore(app: AppContext, source: str, backup_id: str | None, pit: str | None, target_dir: Path | None,
            start: bool, port: int | None, wait_in_flight: float, no_sync: bool, as_json: bool,
            **dumper_options: Any) -> None:
    """Restore SOURCE: the latest state, one backup, or a point in time."""
    from drkit import ops
    from drkit.dumpers import RestoreRequest, dumper_class
    from drkit.progress import progress

    request = RestoreRequest(
        source=app.config.source(source), target_dir=target_dir.absolute() if target_dir else None,
        backup_id=backup_id, point_in_time=parse_time(pit) if pit else None, start=start, port=port,
        sync=not no_sync, wait_in_flight=wait_in_flight, options=dumper_options,
    )
    with progress(f"restore {source}", enabled=_progress_wanted(as_json), count_bytes=False):
        result = ops.restore(app.config, request)
    data = {
        "source": result.source, "backup": result.backup_id,
        "target_dir": str(result.target_dir) if result.target_dir else None,
        "point_in_time": result.point_in_time.isoformat() if result.point_in_time else None,
        "phases_seconds": {k: round(v, 3) for k, v in result.phases.items()},
        "seconds": round(result.seconds, 3), **result.details,
    }
    into = result.target_dir or result.into
    lines = [f"restored {source} from backup {result.backup_id} into {into} ({result.seconds:.1f} s)"]
    lines += [f"  {k}: {v:.2f} s" for k, v in result.phases.items()]
    lines += dumper_class(app.config, source).describe_result(result)
    emit(data, as_json, "\n".join(lines))


@cli.command()
@click.argument("source", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quick", is_flag=True, help="Check every object, size, header and chain, but read no chunk "
              "(a flipped byte inside a chunk is not found).")
@click.option("--sample", type=click.FloatRange(min=0, min_open=True, max=100), metavar="P",
              help="Read the chunks of P % of the packs (0 < P <= 100), the rest as --quick; consecutive "
              "seeds cover every pack in ceil(100/P) runs.")
@click.option("--seed", type=int, help="The --sample seed (default: the week number since the Unix epoch, so a "
              "weekly job covers every pack; the report prints the seed to replay a run).")
@click.pass_obj
def verify(app: AppContext, source: str | None, as_json: bool, quick: bool, sample: float | None,
           seed: int | None) -> None:
    """Read back every backup and log segment (of SOURCE only, if given): every chunk must decrypt
    and hash right (--quick: no chunk is read; --sample P: those of P % of the packs)."""
    from drkit import verify as verify_mod

    if quick and sample is not None:
        raise click.UsageError("give --quick or --sample P, not both")
    if seed is not None and sample is None:
        raise click.UsageError("--seed chooses the packs of --sample P; give --sample too")
    report = verify_mod.verify_repository(app.config, source=source, quick=quick, sample=sample, seed=seed)
    emit(report.as_dict(), as_json, report.text())
    if report.problems:
        raise SystemExit(5)


from drkit.cli.keys import key  # noqa: E402 - the key group lives in drkit/cli/keys.py

cli.add_command(key)
from drkit.cli.forget import forget  # noqa: E402 - drkit/cli/forget.py

cli.add_command(forget)
from drkit.cli.prune import prune as prune_command  # noqa: E402 - drkit/cli/prune.py

cli.add_command(prune_command)
from drkit.cli.upgrade import repository  # noqa: E402 - drkit repository upgrade

cli.add_command(repository)
from drkit.cli.schedule import metrics, schedule  # noqa: E402 - drkit/cli/schedule.py

cli.add_command(schedule)
cli.add_command(metrics)
from drkit.cli.drill import drill, plan_group  # noqa: E402 - drkit/cli/drill.py

cli.add_command(drill)
cli.add_command(plan_group)
from drkit.cli.report import report_group  # noqa: E402 - drkit/cli/report.py

cli.add_command(report_group)
from drkit.cli.k8s import k8s_group  # noqa: E402 - drkit/cli/k8s.py

cli.add_command(k8s_group)


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
