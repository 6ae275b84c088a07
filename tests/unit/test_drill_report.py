"""Drill and quarterly reports over hand-built drill records (pure logic): the quarterly
figures, UTC quarter boundaries, the trend, problems, and that every string from a record is
escaped in the HTML and the Markdown."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from drkit.cli.main import cli
from drkit.drills.quarterly import Quarter, aggregate, write_quarterly
from drkit.drills.report import render_html as drill_html
from drkit.drills.report import render_markdown as drill_markdown
from drkit.drills.report import write_drill_report
from drkit.drills.report_quarterly import render_html, render_markdown
from drkit.errors import ConfigError

TARGETS = {"rpo_seconds": 900.0, "rto_seconds": 3600.0}
HOSTILE = '<script>alert("x")</script><img src="https://evil.example/x.png">'


def rec(source: str, started: str, *, passed: bool = True, rpo: float | None = 60.0, rto: float | None = 30.0,
        datastore: str = "ds-a", failures: list[str] | None = None, error: dict | None = None) -> dict[str, Any]:
    return {"kind": "drill", "source": source, "datastore": datastore,
            "id": re.sub(r"[-:]", "", started) + f"-{abs(hash((source, started))) % 0xFFFFFF:06x}",
            "started": started, "finished": started, "disaster_at": started, "requested": "latest",
            "targets": dict(TARGETS), "passed": passed, "rpo_seconds": rpo, "rto_seconds": rto,
            "newest_safe_time": started, "phases": {"plan": 1.0, "restore": (rto or 3.0) - 2.0, "checks": 1.0},
            "restore_phases": {"download": 1.0}, "checks": [{"name": "serving", "ok": passed, "detail": ""}],
            "failures": failures if failures is not None else ([] if passed else ["the drill failed"]),
            "error": error, "facts": {}, "plan": {}}


def row(data: dict[str, Any], source: str) -> dict[str, Any]:
    return next(r for r in data["sources"] if r["source"] == source)


def test_counts_worst_and_median_of_the_quarter() -> None:
    records = [
        rec("a", "2026-10-02T10:00:00Z", rpo=60, rto=100),
        rec("a", "2026-11-02T10:00:00Z", rpo=300, rto=400),
        rec("a", "2026-12-02T10:00:00Z", passed=False, rpo=1200, rto=200,
            failures=["RPO 1200 s exceeds the target 900 s"]),
        rec("a", "2026-12-20T10:00:00Z", rpo=120, rto=50),
        rec("b", "2026-10-10T00:00:00Z", datastore="ds-b", rpo=5, rto=9000,
            failures=["RTO 9000.0 s exceeds the target 3600 s"], passed=False),
        rec("b", "2027-01-01T00:00:00Z", datastore="ds-b"),  # next quarter: not counted
    ]
    data = aggregate(records, Quarter.parse("2026Q4"))
    a = row(data, "a")
    assert (a["drills"], a["passed"], a["failed"]) == (4, 3, 1)
    assert a["worst_rpo_seconds"] == 1200 and a["median_rpo_seconds"] == 210  # median of 60, 120, 300, 1200
    assert a["worst_rto_seconds"] == 400 and a["median_rto_seconds"] == 150  # median of 50, 100, 200, 400
    assert a["missed_rpo_target"] == 1 and a["missed_rto_target"] == 0
    b = row(data, "b")
    assert (b["drills"], b["passed"], b["failed"], b["missed_rto_target"]) == (1, 0, 1, 1)
    assert b["datastore"] == "ds-b" and b["worst_rto_seconds"] == 9000
    assert data["totals"]["drills"] == 5 and data["totals"]["failed"] == 2
    by_ds = {d["datastore"]: d for d in data["datastores"]}
    assert set(by_ds) == {"ds-a", "ds-b"} and by_ds["ds-a"]["drills"] == 4 and by_ds["ds-b"]["failed"] == 1
    failed = [p for p in data["problems"] if p["kind"] == "failed_drill"]
    assert {p["source"] for p in failed} == {"a", "b"}
    pa = next(p for p in failed if p["source"] == "a")
    assert "RPO 1200 s exceeds" in pa["detail"] and pa["status"].startswith("resolved")  # a later drill passed
    assert next(p for p in failed if p["source"] == "b")["status"] == "open"


def test_unbounded_rpo_and_an_unreached_rto_are_counted_not_hidden() -> None:
    err = {"type": "IntegrityError", "exit_code": 5, "message": "pack deadbeef: authentication failed"}
    records = [rec("a", "2026-10-02T10:00:00Z", passed=False, rpo=None, rto=None, failures=[], error=err),
               rec("a", "2026-10-03T10:00:00Z", rpo=30, rto=20)]
    a = row(aggregate(records, Quarter(2026, 4)), "a")
    assert a["rpo_unbounded"] == 1 and a["rto_not_reached"] == 1 and a["missed_rpo_target"] == 1
    assert a["worst_rpo_seconds"] == 30 and a["worst_rto_seconds"] == 20
    data = aggregate(records, Quarter(2026, 4))
    problem = next(p for p in data["problems"] if p["kind"] == "failed_drill")
    assert "pack deadbeef" in problem["detail"] and problem["exit_code"] == 5
    assert "unbounded / 30 s" in render_markdown(data)


@pytest.mark.parametrize(("started", "quarter"), [
    ("2026-09-30T23:59:59Z", "2026Q3"), ("2026-10-01T00:00:00Z", "2026Q4"),
    ("2026-10-01T01:30:00+02:00", "2026Q3"),  # 2026-09-30T23:30Z
    ("2026-12-31T23:59:59Z", "2026Q4"), ("2027-01-01T00:00:00Z", "2027Q1"),
])
def test_quarter_boundaries_are_utc(started: str, quarter: str) -> None:
    records = [rec("a", started)]
    for q in ("2026Q3", "2026Q4", "2027Q1"):
        assert row(aggregate(records, Quarter.parse(q)), "a")["drills"] == (1 if q == quarter else 0), q


def test_quarter_parsing() -> None:
    q = Quarter.parse("2026Q4")
    assert (q.start, q.end) == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert Quarter.parse("2026-q1") == Quarter(2026, 1) and str(Quarter(2026, 1).previous()) == "2025Q4"
    for bad in ("2026Q5", "2026Q0", "Q4 2026", "2026", "26Q4", "", "2026Q4x"):
        with pytest.raises(ConfigError, match="not a quarter"):
            Quarter.parse(bad)


def test_a_bad_quarter_is_a_usage_error_on_the_command_line() -> None:
    r = CliRunner().invoke(cli, ["report", "quarterly", "--quarter", "2026Q5", "--out", "x"])
    assert r.exit_code == 2 and "2026Q5" in r.output and "e.g. 2026Q4" in r.output


def test_trend_against_the_latest_earlier_quarter_with_drills() -> None:
    records = [rec("a", "2026-02-01T00:00:00Z", rpo=999, rto=999),  # 2026Q1: not the latest earlier one
               rec("a", "2026-08-01T00:00:00Z", rpo=100, rto=200),  # 2026Q3
               rec("a", "2026-08-15T00:00:00Z", passed=False, rpo=300, rto=400),
               rec("a", "2026-11-01T00:00:00Z", rpo=50, rto=300)]  # 2026Q4; no drill in 2026Q2
    a = row(aggregate(records, Quarter.parse("2026Q4")), "a")
    assert [h["quarter"] for h in a["history"]] == ["2026Q1", "2026Q3"]
    t = a["trend"]
    assert t["against"] == "2026Q3"
    assert t["median_rpo_seconds"] == {"now": 50, "before": 200, "change_seconds": -150, "change_percent": -75.0,
                                       "direction": "better"}
    assert t["median_rto_seconds"]["before"] == 300 and t["median_rto_seconds"]["direction"] == "same"
    assert t["worst_rto_seconds"]["direction"] == "better"  # 300 vs 400
    assert t["pass_rate"] == {"now": 1.0, "before": 0.5, "direction": "better"}
    # The charts show the earlier quarters' drills too, divided where the quarter starts.
    html = render_html(aggregate(records, Quarter.parse("2026Q4")))
    assert html.count('class="divider"') == 2 and html.count('class="point') == 2 * 4
    assert html.count('class="point failed"') == 2  # the failed 2026Q3 drill, in both charts
    first = row(aggregate(records, Quarter.parse("2026Q1")), "a")
    assert first["trend"] is None and first["history"] == []


def test_problems_sources_without_drills_and_unreadable_records() -> None:
    records = [rec("a", "2026-07-01T00:00:00Z"), rec("b", "2026-10-05T00:00:00Z"),
               {**rec("c", "2026-10-05T00:00:00Z"), "started": "garbage", "disaster_at": None}]
    data = aggregate(records, Quarter(2026, 4), known_sources={"a": "ds-a", "b": "ds-a", "z": "ds-z"},
                     unreadable=[("drills/b/20261006T000000Z-abcdef", "authentication failed")])
    kinds = sorted((p["kind"], p["source"]) for p in data["problems"])
    assert kinds == [("no_drill", "a"), ("no_drill", "z"), ("unreadable_record", "b"), ("unreadable_record", "c")]
    no_a = next(p for p in data["problems"] if p["kind"] == "no_drill" and p["source"] == "a")
    assert "last drill: 2026-07-01T00:00:00Z" in no_a["detail"]
    assert row(data, "z")["datastore"] == "ds-z" and row(data, "z")["drills"] == 0  # from the configuration
    # --source restricts everything, problems included.
    only = aggregate(records, Quarter(2026, 4), sources=["b"], known_sources={"a": "ds-a", "z": "ds-z"},
                     unreadable=[("drills/a/x", "bad")])
    assert [r["source"] for r in only["sources"]] == ["b"] and only["problems"] == []


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs


def _parsed(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_hostile_strings_are_escaped_in_every_report(tmp_path: Path) -> None:
    bad = rec(HOSTILE, "2026-11-01T00:00:00Z", passed=False, datastore=HOSTILE, failures=[f"cause {HOSTILE}"])
    bad["checks"] = [{"name": HOSTILE, "ok": False, "detail": HOSTILE}]
    bad["facts"] = {HOSTILE: HOSTILE}
    bad["phases"] = {HOSTILE: 2.0, "restore": 1.0}
    data = aggregate([bad], Quarter(2026, 4), unreadable=[(f"drills/{HOSTILE}/x", HOSTILE)])
    for html in (render_html(data), drill_html(bad)):
        parsed = _parsed(html)
        assert "script" not in parsed.tags and "img" not in parsed.tags
        assert not any(v and "evil.example" in v for _, v in parsed.attrs)
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
        assert "svg" in parsed.tags
    for md in (render_markdown(data), drill_markdown(bad)):
        assert "<script>" not in md and "&lt;script&gt;" in md
    paths = write_drill_report(bad, tmp_path)
    assert [p.suffix for p in paths] == [".json", ".md", ".html"] and json.loads(paths[0].read_text()) == bad


def test_the_drill_html_has_its_charts_and_no_external_reference(tmp_path: Path) -> None:
    record = rec("a", "2026-11-01T10:00:00Z", rpo=120.0, rto=30.0)
    record["newest_safe_time"] = "2026-11-01T09:58:00Z"
    coverage = {"read_at": "2026-11-01T10:05:00Z", "gaps": [],
                "points": [{"kind": "backup", "start": "2026-11-01T08:00:00Z", "end": "2026-11-01T08:00:00Z",
                            "backup": "b1"},
                           {"kind": "range", "start": "2026-11-01T08:00:00Z", "end": "2026-11-01T09:58:00Z",
                            "backup": "b1"},
                           {"kind": "backup", "start": "2026-11-02T08:00:00Z", "end": "2026-11-02T08:00:00Z",
                            "backup": "after-the-drill"}]}
    html = drill_html(record, coverage)
    assert 'class="chart-phases"' in html and 'class="chart-timeline"' in html
    assert html.count('class="phase"') == 3 + 1 and 'class="rpo-gap"' in html  # plan/restore/checks + download
    assert html.count('class="backup"') == 1 and "after-the-drill" not in html  # only what the drill saw
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html) and "http:" not in html
    assert "default-src 'none'" in html  # the CSP forbids every fetch
    data = aggregate([record], Quarter(2026, 4))
    paths = write_quarterly(data, tmp_path)
    assert [p.name for p in paths] == ["quarterly-2026Q4.json", "quarterly-2026Q4.md", "quarterly-2026Q4.html"]
    q = paths[2].read_text()
    for cls in ("chart-passfail", "chart-series"):
        assert f'class="{cls}"' in q
    assert "http:" not in q and "https:" not in q and json.loads(paths[0].read_text())["totals"]["drills"] == 1


def test_the_application_of_the_http_checks_is_reported_escaped() -> None:
    from drkit.drills.report import render_html, render_markdown

    rec = {"id": "20261207T000000Z-abcdef", "source": "cache", "datastore": "redis", "passed": False,
           "failures": ["check health: HTTP 500"], "checks": [], "phases": {"plan": 0.1},
           "app": {"command": ["/srv/app", "--port", "8080"], "env": ["DRKIT_RESTORED_URL"], "pid": 12,
                   "exit_code": -15, "end": "stopped", "output": "booting\n<script>alert(1)</script>"}}
    html, md = render_html(rec), render_markdown(rec)
    assert "The application of the HTTP checks" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html and "/srv/app" in html and "DRKIT_RESTORED_URL" in html
    assert "- exit_code: -15" in md and "    <script>alert(1)</script>" in md  # an indented literal block
