"""Drill and quarterly reports from a real drill's stored record, opened in a real headless
Chromium (network off): the pages render, the SVG charts are in the DOM, nothing is fetched; the
quarterly PDF has pages that pdftoppm renders.  Chromium and pdftoppm come from the OS packages
(scripts/install.sh); without them these tests fail, they do not skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_drill import drill
from test_redis_dumper import PASSWORD, renv  # noqa: F401 - the fixture

from drkit import ops
from drkit.config import load_config
from drkit.drills.quarterly import Quarter
from drkit.repository.drills import put_drill

# A src/href/xlink:href/action/srcset or CSS url()/@import that points off the page.
EXTERNAL = re.compile(r"""(?:\b(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//))"""
                      r"""|url\(\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//)|@import""", re.IGNORECASE)


def tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"none of {', '.join(names)} is on PATH: run scripts/install.sh (it installs the OS packages "
                "chromium and poppler-utils that the report tests need)")


def dump_dom(html: Path) -> str:
    """The DOM headless Chromium builds from the page, with every host name unresolvable."""
    chromium = tool("chromium", "chromium-browser", "google-chrome")
    with tempfile.TemporaryDirectory(prefix="drkit-test-chromium-") as profile:
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
                            "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True, timeout=120,
                           check=False)
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    return r.stdout


def assert_self_contained(html: str) -> None:
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower() and "<img" not in html.lower()
    assert "default-src 'none'" in html  # and the page's CSP forbids any fetch should one slip in


def test_drill_and_quarterly_reports_render_in_chromium(renv, tmp_path: Path) -> None:  # noqa: ANN001, F811
    import redis as redis_py

    c = redis_py.Redis(host="127.0.0.1", port=renv.primary.port, password=PASSWORD)
    c.flushall()
    for i in range(30):
        c.set(f"k{i}", i)
    renv.drkit("backup", "cache")
    # `drill --report DIR`: the three files of this drill.
    report = drill(renv, "cache", "--report", str(tmp_path / "drill"))
    assert report["passed"], report["failures"]
    rid = report["id"]
    files = sorted(Path(p).name for p in report["report_files"])
    assert files == [f"{rid}.html", f"{rid}.json", f"{rid}.md"]
    stored = json.loads((tmp_path / "drill" / f"{rid}.json").read_text())
    assert stored["id"] == rid and stored["rpo_seconds"] == report["rpo_seconds"]
    assert stored["coverage"]["points"], "the timeline's restore points were not read"
    md = (tmp_path / "drill" / f"{rid}.md").read_text()
    assert f"# Drill {rid} of cache: PASSED" in md and "| plan |" in md

    # `report drill SOURCE --latest` renders the stored (sealed) record the same way.
    r = renv.drkit("report", "drill", "cache", "--latest", "--out", str(tmp_path / "again"), "--json")
    assert json.loads(r.stdout)["drill"] == rid
    r = renv.drkit("report", "drill", "cache", rid, "--out", str(tmp_path / "by-id"), "--json")
    html_path = tmp_path / "by-id" / f"{rid}.html"
    html = html_path.read_text()
    assert_self_contained(html)
    dom = dump_dom(html_path)
    assert re.search(r'<svg class="chart-phases"', dom) and re.search(r'<svg class="chart-timeline"', dom)
    assert len(re.findall(r'class="phase"', dom)) >= len(report["phases"])  # a segment per RTO phase
    assert 'class="backup"' in dom and "PASSED" in dom
    r = renv.drkit("report", "drill", "cache", "20990101T000000Z-000000", "--out", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and rid in r.stderr + r.stdout  # names the drills there are

    # Quarterly: the real drill, a sealed record of an earlier quarter (the trend) and an
    # unreadable one (a problem, not a crash).
    quarter = Quarter.of(datetime.now(UTC))
    earlier = quarter.previous()
    repo = ops.open_repository(load_config(renv.config_path))
    put_drill(repo, "cache", f"{earlier.year}{3 * earlier.q - 2:02d}15T000000Z-aaaaaa", {
        "datastore": "redis", "started": f"{earlier.year}-{3 * earlier.q - 2:02d}-15T00:00:00Z", "passed": False,
        "rpo_seconds": 2000.0, "rto_seconds": 50.0, "targets": {"rpo_seconds": 900.0, "rto_seconds": 14400.0},
        "failures": ["RPO 2000 s exceeds the target 900 s"]})
    bogus = renv.root / "repo" / "drills" / "cache" / "20261130T000000Z-bad000"
    bogus.write_bytes(b"not a sealed object")
    r = renv.drkit("report", "quarterly", "--quarter", str(quarter), "--out", str(tmp_path / "q"), "--pdf", "--json")
    data = json.loads(r.stdout)
    cache = next(s for s in data["sources"] if s["source"] == "cache")
    assert (cache["drills"], cache["passed"], cache["failed"]) == (1, 1, 0)
    assert cache["worst_rpo_seconds"] == report["rpo_seconds"] == cache["median_rpo_seconds"]
    assert cache["worst_rto_seconds"] == report["rto_seconds"]
    assert cache["trend"]["against"] == str(earlier) and cache["trend"]["pass_rate"]["direction"] == "better"
    kinds = {(p["kind"], p["source"]) for p in data["problems"]}
    assert ("unreadable_record", "cache") in kinds
    assert {("no_drill", "cache-replica"), ("no_drill", "cache-local")} <= kinds  # configured, never drilled
    assert data["datastores"][0]["datastore"] == "redis"
    names = sorted(Path(p).name for p in data["files"])
    assert names == [f"quarterly-{quarter}.{ext}" for ext in ("html", "json", "md", "pdf")]
    qhtml = tmp_path / "q" / f"quarterly-{quarter}.html"
    assert_self_contained(qhtml.read_text())
    dom = dump_dom(qhtml)
    for cls in ("chart-passfail", "chart-series"):
        assert f'<svg class="{cls}"' in dom, cls
    assert "20261130T000000Z-bad000" in dom  # the unreadable record is listed

    # The PDF: its pages render to non-trivial images, and it holds the report's text.
    pdf = tmp_path / "q" / f"quarterly-{quarter}.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run([tool("pdftoppm"), "-png", "-r", "50", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages and all(p.stat().st_size > 3000 for p in pages), [(p.name, p.stat().st_size) for p in pages]
    text = subprocess.run([tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert f"DR drills, {quarter}" in text and "cache" in text

    # --pdf without a Chromium on PATH: a clear configuration error before anything is written;
    # a quarter that does not parse: a usage error.
    empty = tmp_path / "no-chromium"
    empty.mkdir()
    r = renv.drkit("report", "quarterly", "--quarter", str(quarter), "--out", str(empty / "out"), "--pdf",
                   check=False, env={"PATH": str(empty)})
    assert r.returncode == 2 and "chromium" in r.stderr and "scripts/install.sh" in r.stderr, r.stderr
    assert not (empty / "out").exists()
    r = renv.drkit("report", "quarterly", "--quarter", "26Q4", "--out", str(empty / "out"), check=False)
    assert r.returncode == 2 and "26Q4" in r.stderr and not (empty / "out").exists()
