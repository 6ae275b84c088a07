"""A drill's report: ``<id>.json``, ``<id>.md`` and ``<id>.html`` from one drill record.

The record is what ``drkit drill`` stores (``drills/<source>/<id>``, drkit/drills/run.py).  The
HTML page is self-contained: inline CSS, inline SVG charts (drkit/drills/charts.py), no script,
and a Content-Security-Policy that forbids every fetch, so opening it makes no network request.
Every string taken from the record is escaped.

``coverage`` (optional, :func:`coverage_of`) is the source's restore points and gaps read from
the repository when the report is rendered; with it the timeline shows the backups and the log
coverage around the drill, without it only the drill's own times (newest safe time, restored
point, disaster time D and the RPO gap between).
"""

from __future__ import annotations

import html
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.drills import charts
from drkit.drills.charts import esc, fmt_seconds, parse_iso
from drkit.errors import DrkitError

if TYPE_CHECKING:
    from drkit.config import Config

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;
max-width:900px;color:#222;line-height:1.4;padding:0 12px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#2f7a35;font-weight:600}.fail{color:#a8362c;font-weight:600}.muted{color:#6b6b6b}
code{font-family:"DejaVu Sans Mono",monospace;font-size:12px;background:#f5f5f5;padding:0 3px}
svg{display:block;margin:10px 0;max-width:100%;height:auto}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}svg,table{break-inside:avoid}}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def page(title: str, body: list[str]) -> str:
    """A complete HTML document: ``title`` is escaped here, ``body`` is trusted markup."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def table(header: list[str] | None, rows: list[list[str]], numeric: set[int] | None = None) -> str:
    """An HTML table; the cells are trusted markup (escape them before)."""
    numeric = numeric or set()
    if header is None:
        return "<table><tbody>" + "".join(f"<tr><th>{r[0]}</th>" + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>"
                                          for r in rows) + "</tbody></table>"
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_cell(value: object) -> str:
    """Text for Markdown (a table cell or a list item): one line, pipes escaped, and HTML escaped
    too, since Markdown renderers pass raw HTML through."""
    return html.escape(" ".join(str("" if value is None else value).split()), quote=False).replace("|", "\\|")


def verdict(passed: bool) -> str:
    return "PASSED" if passed else "FAILED"


def _target(record: dict[str, Any], what: str) -> float | None:
    value = (record.get("targets") or {}).get(f"{what}_seconds")
    return float(value) if isinstance(value, (int, float)) else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def coverage_of(config: Config, source: str) -> dict[str, Any] | None:
    """The source's restore points and gaps as the repository holds them now (for the
    timeline); None, with a warning, when they cannot be read -- a report still renders."""
    from drkit import ops
    from drkit.dumpers import dumper_for
    from drkit.repository.manifest import iso

    try:
        repo = ops.open_repository(config)
        dumper = dumper_for(config, source)
        points = dumper.restore_points(dumper.catalog(repo))
        return {"read_at": iso(repo.server_time()), "points": [p.as_dict() for p in points.points],
                "gaps": [g.as_dict() for g in points.gaps]}
    except DrkitError as exc:
        log.warning("report of %s: the restore points could not be read, no coverage in the timeline: %s",
                    source, exc)
        return None


def summary_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, plain text) pairs shared by the Markdown and the HTML."""
    plan = record.get("plan") or {}
    rpo, rto = _num(record.get("rpo_seconds")), _num(record.get("rto_seconds"))
    rows = [
        ("Result", verdict(bool(record.get("passed")))),
        ("Source", f"{record.get('source', '?')} ({record.get('datastore') or 'unknown datastore'})"),
        ("Drill", str(record.get("id", "?"))),
        ("Started / finished", f"{record.get('started') or '?'} / {record.get('finished') or '?'}"),
        ("Disaster time D", str(record.get("disaster_at") or "?")),
        ("Requested", str(record.get("requested") or "latest")),
        ("Restored to", f"{record.get('restored_to') or 'not restored'}"
                        + (f" from backup {record['backup']}" if record.get("backup") else "")),
        ("Newest safe time at D", str(record.get("newest_safe_time") or "none: no restore point")),
        ("RPO (D - newest safe time)", f"{fmt_seconds(rpo) if rpo is not None else 'unbounded'} "
                                       f"(target {fmt_seconds(_target(record, 'rpo'))})"),
        ("RTO (start to checked, serving)", f"{fmt_seconds(rto) if rto is not None else 'not reached'} "
                                            f"(target {fmt_seconds(_target(record, 'rto'))})"),
    ]
    lb = record.get("rpo_lookback")
    if isinstance(lb, dict) and _num(lb.get("worst_seconds")) is not None:
        rows.append((f"RPO over the last {fmt_seconds(_num(lb.get('window_seconds')))}",
                     f"worst {fmt_seconds(_num(lb.get('worst_seconds')))} (at {lb.get('worst_at')}), p95 "
                     f"{fmt_seconds(_num(lb.get('p95_seconds')))}, median {fmt_seconds(_num(lb.get('median_seconds')))}"
                     + ("; upper bounds (history thinned)" if lb.get("upper_bound") else "")
                     + (f"; {fmt_seconds(_num(lb.get('seconds_without_a_restore_point')))} without a restore point"
                        if _num(lb.get("seconds_without_a_restore_point")) else "")))
    if plan:
        rows.append(("Planned", f"{_mb(plan.get('bytes'))} to fetch ({_mb(plan.get('log_bytes'))} of log, "
                                f"{plan.get('log_records', '?')} log record(s)); predicted RTO "
                                f"{fmt_seconds(_num(plan.get('predicted_rto_seconds')))} -- {plan.get('basis', '')}"))
    if record.get("runbook"):
        rows.append(("Runbook", str(record["runbook"])))
    if record.get("stored_as"):
        rows.append(("Stored as", str(record["stored_as"])))
    return rows


def _mb(value: object) -> str:
    v = _num(value)
    if v is None:
        return "?"
    return f"{v / 1e9:.2f} GB" if v >= 1e9 else f"{v / 1e6:.1f} MB" if v >= 1e6 else f"{v / 1e3:.1f} kB"


# The order a restore goes through them: the stored record's keys are sorted, so the bar would
# otherwise read alphabetically.  Names not listed keep their place after the listed ones.
PHASE_ORDER = ("plan", "lease", "download", "fetch", "decrypt", "decompress", "restore", "lay down", "lay_down",
               "open", "replay", "log replay", "log_replay", "recover", "start", "checks")


def _phases(record: dict[str, Any], key: str) -> dict[str, float]:
    items = [(str(k), float(v)) for k, v in (record.get(key) or {}).items() if _num(v) is not None]
    rank = {name: i for i, name in enumerate(PHASE_ORDER)}
    return dict(sorted(items, key=lambda kv: rank.get(kv[0], len(rank))))


def render_markdown(record: dict[str, Any], coverage: dict[str, Any] | None = None) -> str:
    out = [f"# Drill {md_cell(record.get('id'))} of {md_cell(record.get('source'))}: "
           f"{verdict(bool(record.get('passed')))}", "", "| | |", "|---|---|"]
    out += [f"| {md_cell(k)} | {md_cell(v)} |" for k, v in summary_rows(record)]
    if record.get("failures"):
        out += ["", "## Failures", ""] + [f"- {md_cell(f)}" for f in record["failures"]]
    if record.get("error"):
        e = record["error"]
        out += ["", "## Error", "", f"{md_cell(e.get('type'))} (exit code {md_cell(e.get('exit_code'))}): "
                f"{md_cell(e.get('message'))}"]
    for key, title in (("phases", "RTO phases"), ("restore_phases", "Restore phases")):
        phases = _phases(record, key)
        if phases:
            total = sum(phases.values()) or 1.0
            out += ["", f"## {title}", "", "| Phase | Seconds | Share |", "|---|---:|---:|"]
            out += [f"| {md_cell(k)} | {v:.3f} | {100 * v / total:.0f} % |" for k, v in phases.items()]
    if record.get("checks"):
        out += ["", "## Checks", "", "| Check | Result | Detail |", "|---|---|---|"]
        out += [f"| {md_cell(c.get('name'))} | {'ok' if c.get('ok') else 'FAILED'} | {md_cell(c.get('detail'))} |"
                for c in record["checks"] if isinstance(c, dict)]
    app = record.get("app")
    if isinstance(app, dict):
        out += ["", "## The application of the HTTP checks", ""]
        out += [f"- {k}: {md_cell(_fact(app[k]))}" for k in APP_FIELDS if app.get(k) is not None]
        if app.get("output"):
            out += ["", "    " + str(app["output"]).replace("\n", "\n    ")]  # an indented (literal) block
    if record.get("facts"):
        out += ["", "## What the restored instance held", ""]
        out += [f"- {md_cell(k)}: {md_cell(_fact(v))}" for k, v in sorted(record["facts"].items())]
    if coverage:
        out += ["", f"## Restore points (read from the repository at {md_cell(coverage.get('read_at'))})", ""]
        out += [f"- {md_cell(p.get('kind'))} {md_cell(p.get('start'))} .. {md_cell(p.get('end'))} "
                f"(backup {md_cell(p.get('backup'))})" for p in coverage.get("points", [])]
        out += [f"- {md_cell(g.get('state'))}: {md_cell(g.get('missing'))} in the chain of {md_cell(g.get('chain'))}"
                for g in coverage.get("gaps", [])]
    return "\n".join(out) + "\n"


APP_FIELDS = ("command", "env", "pid", "exit_code", "end", "error")


def _fact(v: object) -> str:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)


def timeline_svg(record: dict[str, Any], coverage: dict[str, Any] | None = None) -> str:
    """The timeline: backups and log coverage (from ``coverage``) and the drill's times; "" when
    the record has no time to place."""
    disaster = parse_iso(record.get("disaster_at"))
    newest = parse_iso(record.get("newest_safe_time"))
    restored = parse_iso(record.get("restored_to"))
    spans: list[tuple[datetime, datetime, str, str]] = []
    for p in (coverage or {}).get("points", []):
        a, b = parse_iso(p.get("start")), parse_iso(p.get("end"))
        if a is None or b is None or (disaster is not None and a > disaster):
            continue  # a point taken after the drill is not what the drill saw
        if disaster is not None and b > disaster:
            b = disaster
        kind = "backup" if p.get("kind") == "backup" else "range"
        diamond = (a, a, "backup", f"backup {p.get('backup')} at {p.get('start')}")
        if diamond not in spans:  # a backup and the ranges its chain reaches share one diamond
            spans.append(diamond)
        if kind == "range" and b > a:
            spans.append((a, b, "range", f"log coverage {p.get('start')} .. {p.get('end')} (backup {p.get('backup')})"))
    markers = []
    if newest:
        markers.append((newest, f"newest safe time {record.get('newest_safe_time')}", charts.PALETTE[2]))
    if restored and restored != newest:
        markers.append((restored, f"restored to {record.get('restored_to')}", charts.PALETTE[4]))
    if disaster:
        markers.append((disaster, f"disaster time D {record.get('disaster_at')}", charts.BAD))
    if not markers and not spans:
        return ""
    shade = None
    if newest and disaster:
        shade = (newest, disaster, f"RPO {fmt_seconds(_num(record.get('rpo_seconds')))}: commits after the newest "
                                   "safe time are lost")
    return charts.timeline(spans, markers, shade)


def render_html(record: dict[str, Any], coverage: dict[str, Any] | None = None) -> str:
    passed = bool(record.get("passed"))
    title = f"Drill {record.get('id', '?')} of {record.get('source', '?')}"
    body = [f"<h1>{esc(title)}: <span class=\"{'pass' if passed else 'fail'}\">{verdict(passed)}</span></h1>",
            table(None, [[esc(k), esc(v)] for k, v in summary_rows(record)])]
    if record.get("failures"):
        body += ["<h2>Failures</h2><ul>"] + [f"<li class=\"fail\">{esc(f)}</li>" for f in record["failures"]] + ["</ul>"]
    if record.get("error"):
        e = record["error"]
        body.append(f"<h2>Error</h2><p><code>{esc(e.get('type'))}</code> (exit code {esc(e.get('exit_code'))}): "
                    f"{esc(e.get('message'))}</p>")
    body.append("<h2>RTO</h2>")
    phases = _phases(record, "phases")
    body.append(charts.phases_bar(phases, "RTO by phase"))
    restore = _phases(record, "restore_phases")
    if restore:
        body.append(charts.phases_bar(restore, "Inside the restore phase"))
    if phases:
        total = sum(phases.values()) or 1.0
        body.append(table(["Phase", "Seconds", "Share"], [[esc(k), f"{v:.3f}", f"{100 * v / total:.0f} %"]
                                                         for k, v in [*phases.items(), *((f"restore: {k}", v) for k, v in restore.items())]],
                          {1, 2}))
    svg = timeline_svg(record, coverage)
    if svg:
        body.append("<h2>RPO and the timeline</h2>")
        if coverage:
            body.append(f"<p class=\"muted\">Restore points as the repository held them at "
                        f"{esc(coverage.get('read_at'))}, up to D.</p>")
        body.append(svg)
        gaps = (coverage or {}).get("gaps", [])
        if gaps:
            body += ["<ul>"] + [f"<li class=\"fail\">{esc(g.get('state'))}: {esc(g.get('missing'))} in the chain of "
                                f"{esc(g.get('chain'))}</li>" for g in gaps] + ["</ul>"]
    if record.get("checks"):
        body.append("<h2>Checks</h2>")
        body.append(table(["Check", "Result", "Detail"], [
            [esc(c.get("name")), f"<span class=\"{'pass' if c.get('ok') else 'fail'}\">{'ok' if c.get('ok') else 'FAILED'}"
             "</span>", esc(c.get("detail"))] for c in record["checks"] if isinstance(c, dict)]))
    app = record.get("app")
    if isinstance(app, dict):
        body.append("<h2>The application of the HTTP checks</h2>")
        body.append(table(None, [[esc(k), f"<code>{esc(_fact(app[k]))}</code>"]
                                 for k in APP_FIELDS if app.get(k) is not None]))
        if app.get("output"):
            body.append(f"<pre>{esc(app['output'])}</pre>")
    if record.get("facts"):
        body.append("<h2>What the restored instance held</h2>")
        body.append(table(["Fact", "Value"], [[esc(k), f"<code>{esc(_fact(v))}</code>"]
                                              for k, v in sorted(record["facts"].items())]))
    body.append(f"<p class=\"muted\">Rendered by drkit at {esc(datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))} "
                "from the sealed drill record.</p>")
    return page(title, body)


def write_drill_report(record: dict[str, Any], out: Path, coverage: dict[str, Any] | None = None) -> list[Path]:
    """Write ``<id>.json``, ``<id>.md`` and ``<id>.html`` into ``out`` (created); returns the paths."""
    drill_id = str(record.get("id") or "drill")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in drill_id).lstrip(".") or "drill"
    try:
        out.mkdir(parents=True, exist_ok=True)
        doc = {**record, **({"coverage": coverage} if coverage else {})}
        paths = [out / f"{safe}.json", out / f"{safe}.md", out / f"{safe}.html"]
        paths[0].write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        paths[1].write_text(render_markdown(record, coverage))
        paths[2].write_text(render_html(record, coverage))
    except OSError as exc:
        raise DrkitError(f"cannot write the drill report into {out}: {exc.strerror or exc}; "
                         "choose a writable --report/--out directory") from None
    return paths
