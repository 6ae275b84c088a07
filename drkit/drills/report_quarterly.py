"""The quarterly report's Markdown and self-contained HTML (inline SVG, no script, no external
reference), from :func:`drkit.drills.quarterly.aggregate`'s data.  Every string from a record
is escaped."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from drkit.drills import charts
from drkit.drills.charts import esc, fmt_seconds, parse_iso
from drkit.drills.report import md_cell, page, table


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _s(v: object) -> str:
    return fmt_seconds(v) if isinstance(v, (int, float)) else "-"  # type: ignore[arg-type]


def _rpo_text(row: dict[str, Any]) -> str:
    worst = "unbounded" if row["rpo_unbounded"] else _s(row["worst_rpo_seconds"])
    return f"{worst} / {_s(row['median_rpo_seconds'])}"


def _trend_text(trend: dict[str, Any] | None) -> str:
    if not trend:
        return "no earlier quarter with drills"
    parts = []
    for key, label in (("median_rto_seconds", "median RTO"), ("median_rpo_seconds", "median RPO")):
        t = trend.get(key)
        if t:
            pct = f", {t['change_percent']:+.0f} %" if t.get("change_percent") is not None else ""
            parts.append(f"{label} {fmt_seconds(t['now'])} vs {fmt_seconds(t['before'])} ({t['direction']}{pct})")
    p = trend["pass_rate"]
    parts.append(f"pass rate {100 * (p['now'] or 0):.0f} % vs {100 * (p['before'] or 0):.0f} % ({p['direction']})")
    return f"against {trend['against']}: " + "; ".join(parts)


def render_markdown(data: dict[str, Any]) -> str:
    t = data["totals"]
    out = [f"# DR drills, {data['quarter']} ({data['start']} .. {data['end']})", "",
           f"{t['drills']} drill(s): {t['passed']} passed, {t['failed']} failed; "
           f"{len([p for p in data['problems'] if p.get('status', 'open') == 'open'])} open problem(s).", "",
           "## Per datastore", "", "| Datastore | Drills | Passed | Failed | Worst / median RPO | Worst / median RTO |",
           "|---|---:|---:|---:|---|---|"]
    out += [f"| {md_cell(d['datastore'])} | {d['drills']} | {d['passed']} | {d['failed']} | {_rpo_text(d)} | "
            f"{_s(d['worst_rto_seconds'])} / {_s(d['median_rto_seconds'])} |" for d in data["datastores"]]
    out += ["", "## Per source", "", "| Source | Datastore | Drills | Passed | Failed | Missed RPO / RTO target | "
            "Worst / median RPO | Worst / median RTO | Trend |", "|---|---|---:|---:|---:|---|---|---|---|"]
    out += [f"| {md_cell(r['source'])} | {md_cell(r['datastore'])} | {r['drills']} | {r['passed']} | {r['failed']} | "
            f"{r['missed_rpo_target']} / {r['missed_rto_target']} | {_rpo_text(r)} | {_s(r['worst_rto_seconds'])} / "
            f"{_s(r['median_rto_seconds'])} | {md_cell(_trend_text(r['trend']))} |" for r in data["sources"]]
    out += ["", "## Open problems", ""]
    out += [f"- **{md_cell(p['kind'])}** {md_cell(p.get('source'))}"
            + (f" drill {md_cell(p.get('id'))}" if p.get("id") else "")
            + f": {md_cell(p['detail'])}" + (f" ({md_cell(p['status'])})" if p.get("status") else "")
            for p in data["problems"]] or ["None."]
    out += ["", "## Drills", "", "| Source | Drill | Started | Result | RPO | RTO | Cause |", "|---|---|---|---|---|---|---|"]
    out += [f"| {md_cell(d['source'])} | {md_cell(d['id'])} | {md_cell(d['started'])} | "
            f"{'passed' if d['passed'] else 'FAILED'} | {_s(d['rpo_seconds']) if d['rpo_seconds'] is not None else 'unbounded'}"
            f" | {_s(d['rto_seconds'])} | {md_cell(d.get('cause', ''))} |" for d in data["drills"]]
    return "\n".join(out) + "\n"


def _series(data: dict[str, Any], key: str) -> dict[str, list[tuple[datetime, float | None, bool]]]:
    out: dict[str, list[tuple[datetime, float | None, bool]]] = defaultdict(list)
    for d in [*data.get("earlier_drills", []), *data["drills"]]:
        when = parse_iso(d.get("started"))
        if when is not None and not (key == "rto_seconds" and d[key] is None):
            out[str(d["source"])].append((when, d[key], d["passed"]))
    return dict(out)


def _one_target(data: dict[str, Any], key: str) -> float | None:
    values = {_num(d["targets"].get(key)) for d in data["drills"]} - {None}
    return values.pop() if len(values) == 1 else None


def render_html(data: dict[str, Any]) -> str:
    t = data["totals"]
    title = f"DR drills, {data['quarter']}"
    open_n = len([p for p in data["problems"] if p.get("status", "open") == "open"])
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class=\"muted\">{esc(data['start'])} .. {esc(data['end'])} (UTC; a drill counts in the quarter of "
            f"its start). Generated {esc(data['generated_at'])}.</p>",
            f"<p><b>{t['drills']}</b> drill(s): <span class=\"pass\">{t['passed']} passed</span>, "
            f"<span class=\"{'fail' if t['failed'] else 'muted'}\">{t['failed']} failed</span>; "
            f"<span class=\"{'fail' if open_n else 'muted'}\">{open_n} open problem(s)</span>.</p>",
            "<h2>Per datastore</h2>",
            table(["Datastore", "Drills", "Passed", "Failed", "Worst / median RPO", "Worst / median RTO"],
                  [[esc(d["datastore"]), str(d["drills"]), str(d["passed"]), str(d["failed"]), esc(_rpo_text(d)),
                    esc(f"{_s(d['worst_rto_seconds'])} / {_s(d['median_rto_seconds'])}")] for d in data["datastores"]],
                  {1, 2, 3}),
            "<h2>Per source</h2>",
            table(["Source", "Datastore", "Drills", "Passed", "Failed", "Missed RPO / RTO target",
                   "Worst / median RPO", "Worst / median RTO", "Trend"],
                  [[esc(r["source"]), esc(r["datastore"]), str(r["drills"]), str(r["passed"]),
                    f"<span class=\"{'fail' if r['failed'] else ''}\">{r['failed']}</span>",
                    f"{r['missed_rpo_target']} / {r['missed_rto_target']}", esc(_rpo_text(r)),
                    esc(f"{_s(r['worst_rto_seconds'])} / {_s(r['median_rto_seconds'])}"), esc(_trend_text(r["trend"]))]
                   for r in data["sources"]], {2, 3, 4}),
            charts.pass_fail([(str(r["source"]), r["passed"], r["failed"]) for r in data["sources"]])]
    if data["drills"]:
        start = parse_iso(data["start"])
        divider = (start, f"{data['quarter']} starts") if start and data.get("earlier_drills") else None
        span = f"{data['quarter']} and the earlier quarters with drills" if divider else data["quarter"]
        body += ["<h2>RPO and RTO over time</h2>",
                 charts.series(_series(data, "rpo_seconds"), f"RPO of each drill, {span}",
                               _one_target(data, "rpo_seconds"), divider=divider),
                 charts.series(_series(data, "rto_seconds"), f"RTO of each drill, {span}",
                               _one_target(data, "rto_seconds"), divider=divider)]
    hist_rows = [[esc(r["source"]), esc(h["quarter"]), str(h["drills"]), str(h["passed"]), esc(_rpo_text(h)),
                  esc(f"{_s(h['worst_rto_seconds'])} / {_s(h['median_rto_seconds'])}")]
                 for r in data["sources"] for h in [*r["history"], {"quarter": data["quarter"], **r}] if h["drills"]]
    body += ["<h2>Trend</h2>", table(["Source", "Quarter", "Drills", "Passed", "Worst / median RPO",
                                      "Worst / median RTO"], hist_rows, {2, 3})]
    body.append("<h2>Open problems</h2>")
    if data["problems"]:
        body += ["<ul>"] + [
            f"<li><b>{esc(p['kind'])}</b> {esc(p.get('source'))}"
            + (f" drill <code>{esc(p.get('id'))}</code>" if p.get("id") else "") + f": {esc(p['detail'])}"
            + (f" <span class=\"{'fail' if p['status'] == 'open' else 'muted'}\">({esc(p['status'])})</span>"
               if p.get("status") else "") + "</li>" for p in data["problems"]] + ["</ul>"]
    else:
        body.append("<p class=\"pass\">None.</p>")
    body += ["<h2>Drills</h2>", table(
        ["Source", "Drill", "Started", "Result", "RPO", "RTO", "Cause"],
        [[esc(d["source"]), f"<code>{esc(d['id'])}</code>", esc(d["started"]),
          f"<span class=\"{'pass' if d['passed'] else 'fail'}\">{'passed' if d['passed'] else 'FAILED'}</span>",
          esc(_s(d["rpo_seconds"]) if d["rpo_seconds"] is not None else "unbounded"), esc(_s(d["rto_seconds"])),
          esc(d.get("cause", ""))] for d in data["drills"]])]
    return page(title, body)
