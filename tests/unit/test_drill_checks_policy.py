"""The user checks of a drill as a policy declares them (``drills: {SOURCE: {checks, app}}``):
what parses, and every bad declaration reported at once with its file, line and field; the
datastores' query forms; the HTTP check's rule (2 consecutive passes within a deadline)."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drkit.config import load_config
from drkit.drills.checks import http_check
from drkit.dumpers.mongodb.checks import query_problem as mongo_problem
from drkit.dumpers.redis.checks import rows_of, words
from drkit.errors import ConfigError
from drkit.scheduling.policy import Check, load_policies, policy_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schedules"
DRKIT = str(Path(sys.executable).parent / "drkit")
BASE = {"sources": ["main-pg", "cache", "records"], "full": "0 0 * * *"}


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("DRKIT_MASTER_KEY", "unused")
    return load_config(EXAMPLES / "drkit.yaml")


def write(d: Path, body: dict | str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "p.yaml").write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return d


def test_a_drills_section_parses_into_checks_and_an_app(tmp_path: Path, config) -> None:  # noqa: ANN001
    drills = {
        "main-pg": {"checks": [{"name": "version", "query": "SELECT max(v) FROM migrations", "expect": 42},
                               {"name": "patients", "query": "SELECT 1 FROM patients LIMIT 3", "expect_rows": 3,
                                "database": "app"},
                               {"name": "health", "url": "http://127.0.0.1:8080/health"}],
                    "app": {"command": ["/srv/app", "--port", "8080"], "env": {"MODE": "drill", "N": 3}}},
        "cache": {"checks": [{"name": "v", "query": "GET config:version", "expect": "7"},
                             {"name": "f", "query": ["HGET", "user:1", "name"], "expect": "Ada"}]},
        "records": {"checks": [{"name": "n", "query": {"db": "app", "collection": "p", "filter": {"x": 1}},
                                "expect_rows": 1}]},
    }
    p = policy_of(load_policies(write(tmp_path, {**BASE, "drills": drills}), config), "main-pg")
    pg = p.drills["main-pg"]
    assert [c.name for c in pg.checks] == ["version", "patients", "health"]
    assert pg.checks[0].expect == "42" and pg.checks[0].expect_rows is None  # a YAML number compares as text
    assert pg.checks[1].expect_rows == 3 and pg.checks[1].database == "app"
    assert pg.checks[2].http and pg.checks[2].expect_status is None and not pg.checks[0].http
    assert pg.app.command == ["/srv/app", "--port", "8080"] and pg.app.env == {"MODE": "drill", "N": "3"}
    assert pg.app.ready_timeout == 60.0
    assert p.drills["cache"].checks[1].query == ["HGET", "user:1", "name"] and p.drills["cache"].app is None
    assert p.drills["records"].checks[0].query["collection"] == "p"


def test_the_shipped_policies_still_load(config) -> None:  # noqa: ANN001
    for d in ("seed", "continuous"):
        assert all(p.drills == {} for p in load_policies(EXAMPLES / d, config))


def test_every_bad_declaration_is_reported_at_once_naming_file_line_field(tmp_path: Path, config) -> None:  # noqa: ANN001
    body = """sources: [main-pg, cache, records]
full: "0 0 * * *"
drills:
  main-pg:
    checks:
      - {name: both, query: "SELECT 1", expect: "1", expect_rows: 1}
      - {name: neither, query: "SELECT 1"}
      - {name: web, url: "http://127.0.0.1:1/h", expect_rows: 2}
      - {name: web, url: "ftp://nowhere"}
      - {name: serving, query: "SELECT 1", expect: "1"}
      - {name: odd, query: "SELECT 1", expect: "1", timeout: 3}
      - {name: sql, query: {db: app}, expect: "1"}
  cache:
    checks:
      - {name: mapping, query: {collection: c}, expect_rows: 1}
  records:
    checks:
      - {name: text, query: "db.c.find()", expect_rows: 1}
      - {name: keys, query: {db: app, collection: c, filtr: {}}, expect_rows: 1}
    app: {command: [/bin/true]}
  other:
    checks: []
"""
    with pytest.raises(ConfigError) as exc:
        load_policies(write(tmp_path, body), config)
    text = str(exc.value)
    f = str(tmp_path / "p.yaml")
    want = [
        (6, "drills.main-pg.checks[0]", "exactly one of 'expect'"),
        (7, "drills.main-pg.checks[1]", "exactly one of 'expect'"),
        (8, "drills.main-pg.checks[2].expect_rows", "belongs to a data check"),
        (9, "drills.main-pg.checks[3].url", "expected an http:// or https:// URL"),
        (9, "drills.main-pg.checks[3].name", "already used by another check"),
        (10, "drills.main-pg.checks[4].name", "the built-in check's"),
        (11, "drills.main-pg.checks[5].timeout", "unknown setting"),
        (12, "drills.main-pg.checks[6].query", "one SQL statement, as a string"),
        (4, "drills.main-pg.app", "required by the HTTP checks"),
        (15, "drills.cache.checks[0].query", "a Redis data check's query is a command"),
        (18, "drills.records.checks[0].query", "a MongoDB data check's query is a mapping"),
        (19, "drills.records.checks[1].query", "unknown key(s) filtr"),
        (20, "drills.records.app", "no HTTP check"),
        (21, "drills.other", "not one of this policy's sources"),
    ]
    lines = text.splitlines()
    for line, field, words_ in want:
        assert any(ln.startswith(f"{f}: line {line}: {field}: ") and words_ in ln for ln in lines), (field, text)
    assert len(lines) == len(want), text  # nothing else, nothing twice


def test_schedule_lint_reports_a_bad_check_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "drkit.yaml"
    shutil.copy(EXAMPLES / "drkit.yaml", cfg)
    write(tmp_path / "schedules", {**BASE, "drills": {"cache": {"checks": [{"name": "x", "query": "GET k"}]}}})
    r = subprocess.run([DRKIT, "--config", str(cfg), "schedule", "lint", "--offline"], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "DRKIT_MASTER_KEY": "unused"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "drills.cache.checks[0]" in r.stderr and "exactly one of 'expect'" in r.stderr


def test_the_redis_and_mongodb_query_forms() -> None:
    assert words("GET 'a key'") == ["GET", "a key"] and words(["HGET", "k", "f"]) == ["HGET", "k", "f"]
    assert rows_of(None) == [] and rows_of(b"v") == ["v"] and rows_of(3) == ["3"]
    assert rows_of([b"a", b"b"]) == ["a", "b"] and rows_of({b"f": b"1"}) == ["f", "1"]
    assert rows_of([[b"x", 1]]) == ['["x", "1"]']
    assert mongo_problem({"db": "a", "collection": "c", "filter": {"x": 1}, "limit": 2}) is None
    assert mongo_problem({"db": "a", "collection": "c", "pipeline": [{"$count": "n"}]}) is None
    assert mongo_problem({"db": "a", "command": {"count": "c"}}) is None
    assert "pipeline: expected a list" in mongo_problem({"collection": "c", "pipeline": {}})
    assert "names its collection" in mongo_problem({"db": "a", "filter": {}})
    assert "limit" in mongo_problem({"collection": "c", "limit": -1})


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    """A local HTTP server answering the statuses of ``plan`` in turn (the last one from then on)."""
    plan: list[int] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = plan.pop(0) if len(plan) > 1 else plan[0]
            self.send_response(code)
            if code == 302:
                self.send_header("Location", "/elsewhere")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/health", plan
    srv.shutdown()
    srv.server_close()


def test_an_http_check_needs_two_consecutive_passes_within_its_deadline(server) -> None:  # noqa: ANN001
    url, plan = server
    plan[:] = [503, 200, 500, 200, 200]  # warming up, a blip, then healthy
    got = http_check(Check(name="h", url=url), 10.0, None)
    assert got["ok"] and "5 attempt(s)" in got["detail"], got
    plan[:] = [200, 500]  # never twice in a row
    got = http_check(Check(name="h", url=url), 2.0, None)
    assert not got["ok"] and "got status 500" in got["detail"] and "within 2 s" in got["detail"], got
    plan[:] = [302]  # a redirect is the answer, not followed
    assert http_check(Check(name="h", url=url, expect_status=302), 5.0, None)["ok"]
    got = http_check(Check(name="h", url="http://127.0.0.1:1/health"), 1.0, None)
    assert not got["ok"] and "no answer" in got["detail"]


def test_drill_schedules_must_hold_a_policy_of_the_source(tmp_path: Path) -> None:
    write(tmp_path / "s", {"sources": ["main-pg"], "full": "0 0 * * *"})
    r = subprocess.run([DRKIT, "--config", str(EXAMPLES / "drkit.yaml"), "drill", "cache", "--schedules",
                        str(tmp_path / "s")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "DRKIT_MASTER_KEY": "unused"})
    assert r.returncode == 2 and "no policy in" in r.stderr and "'cache'" in r.stderr, r.stdout + r.stderr
