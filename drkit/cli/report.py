"""``drkit report``: drill reports (drkit/drills/report.py) and the quarterly report
(drkit/drills/quarterly.py) from the drill records stored in the repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from drkit.cli.main import AppContext
    from drkit.drills.quarterly import Quarter


@click.group(name="report")
def report_group() -> None:
    """Reports from the drills stored in the repository: one drill's, or a quarter's."""


@report_group.command("drill")
@click.argument("source")
@click.argument("drill_id", required=False, metavar="[DRILL_ID]")
@click.option("--latest", is_flag=True, help="The source's newest drill (the default without DRILL_ID).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for ID.json, ID.md and ID.html (created).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def report_drill(app: AppContext, source: str, drill_id: str | None, latest: bool, out: Path, as_json: bool) -> None:
    """Render a stored drill of SOURCE (DRILL_ID, or the newest) as JSON, Markdown and a
    self-contained HTML page (inline SVG charts: RTO phases, the timeline of backups, log
    coverage and RPO; no external request)."""
    from drkit import ops
    from drkit.cli.main import emit
    from drkit.drills.report import coverage_of, write_drill_report
    from drkit.errors import DrkitError, NotFoundError
    from drkit.repository.drills import drill_key, list_drills, load_drill

    if latest and drill_id:
        raise click.UsageError("give DRILL_ID or --latest, not both")
    repo = ops.open_repository(app.config)
    if drill_id:
        try:
            record = load_drill(repo, drill_key(source, drill_id))
        except NotFoundError:
            known = [d.get("id") for d in list_drills(repo, source)[0]][-5:]
            raise click.BadParameter(f"source {source} has no drill {drill_id!r} (newest: "
                                     f"{', '.join(map(str, known)) or 'none'}); see 'drkit list' or use --latest",
                                     param_hint="DRILL_ID") from None
    else:
        records, bad = list_drills(repo, source)
        if not records:
            why = f" ({len(bad)} unreadable: {bad[-1][0]}: {bad[-1][1]})" if bad else ""
            raise DrkitError(f"source {source} has no readable stored drill{why}: run 'drkit drill {source}' first")
        record = records[-1]
    coverage = coverage_of(app.config, source) if source in app.config.sources else None
    paths = write_drill_report(record, out, coverage)
    emit({"drill": record.get("id"), "source": source, "passed": record.get("passed"),
          "files": [str(p) for p in paths]}, as_json,
         f"drill {record.get('id')} of {source} ({'PASSED' if record.get('passed') else 'FAILED'}): "
         + ", ".join(str(p) for p in paths))


def _quarter(ctx: click.Context, param: click.Parameter, value: str) -> Quarter:
    from drkit.drills.quarterly import Quarter
    from drkit.errors import ConfigError

    try:
        return Quarter.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@report_group.command("quarterly")
@click.option("--quarter", "quarter", required=True, callback=_quarter, metavar="YYYYQN",
              help="The quarter, e.g. 2026Q4 (UTC boundaries; a drill counts in the quarter it started).")
@click.option("--source", "sources", multiple=True, metavar="SOURCE",
              help="Only this source (repeatable). Default: every configured source and every source with drills.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for quarterly-QUARTER.json, .md and .html (created).")
@click.option("--pdf", is_flag=True, help="Also print the HTML to quarterly-QUARTER.pdf with headless Chromium "
              "(the OS package chromium).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the report's data).")
@click.pass_obj
def report_quarterly(app: AppContext, quarter: Quarter, sources: tuple[str, ...], out: Path, pdf: bool,
                     as_json: bool) -> None:
    """Aggregate the quarter's stored drills across sources: per datastore and source, drills
    run, passed and failed against their targets, worst and median RPO and RTO, the trend
    against the earlier quarters with drills, and open problems (failed drills' causes, sources
    without a drill, unreadable drill records). Exits 0 when the report is written, whatever
    it says."""
    from drkit import ops
    from drkit.cli.main import emit
    from drkit.drills.quarterly import aggregate, find_chromium, print_pdf, write_quarterly
    from drkit.repository.drills import list_drills

    if pdf:
        find_chromium()  # before any work: a missing Chromium is a clear configuration error
    repo = ops.open_repository(app.config)
    records, bad = list_drills(repo)
    data: dict[str, Any] = aggregate(records, quarter, sources=list(sources) or None,
                                     known_sources={n: c.type for n, c in app.config.sources.items()}, unreadable=bad)
    paths = write_quarterly(data, out)
    if pdf:
        paths.append(print_pdf(paths[2], paths[2].with_suffix(".pdf")))
    t = data["totals"]
    open_n = sum(1 for p in data["problems"] if p.get("status", "open") == "open")
    emit({**data, "files": [str(p) for p in paths]}, as_json,
         f"{data['quarter']}: {t['drills']} drill(s), {t['passed']} passed, {t['failed']} failed, "
         f"{open_n} open problem(s)\n" + "\n".join(f"  {p}" for p in paths))
