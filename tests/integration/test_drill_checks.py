"""A drill's user checks from the source's policy, against real restored servers: SQL, Redis and
MongoDB data checks with ``expect`` / ``expect_rows``, and HTTP checks against an application the
test provides as the operator's command (it reads the restored instance through the address in
its environment).  A failed check fails the drill (exit 13) and its record says expected vs got."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import yaml
from pgenv import PgEnv
from test_drill import assert_measured, pg  # noqa: F401 - the fixture
from test_mongodb_dumper import MongoEnv, menv  # noqa: F401 - the fixture
from test_redis_dumper import PASSWORD, renv  # noqa: F401 - the fixture


def policy(root: Path, source: str, checks: list[dict], app: dict | None = None) -> Path:
    """``root/schedules/drill.yaml``: a policy of ``source`` with these checks (and app)."""
    d = root / "schedules"
    d.mkdir(parents=True, exist_ok=True)
    spec: dict = {"checks": checks, **({"app": app} if app else {})}
    (d / "drill.yaml").write_text(yaml.safe_dump({"sources": [source], "full": "0 0 * * *",
                                                  "drills": {source: spec}}, sort_keys=False))
    return d


def run(env, source: str, *args: str, rc: int) -> dict:  # noqa: ANN001
    t0 = time.monotonic()
    r = env.drkit("drill", source, "--json", *args, check=False)
    wall = time.monotonic() - t0
    assert r.returncode == rc, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert_measured(report, wall)  # the checks' time is inside the RTO's checks phase
    return report


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_postgres_sql_checks_pass_and_a_wrong_expectation_fails_the_drill(pg: PgEnv) -> None:  # noqa: F811
    with pg.conn() as c:
        c.execute("CREATE TABLE t (id int, name text)")
        c.execute("INSERT INTO t SELECT i, 'n' || i FROM generate_series(1, 100) i")
    pg.drkit("backup", "main")
    with pg.conn() as c:
        c.execute("INSERT INTO t VALUES (101, 'last')")
    pg.switch_and_wait_archived()
    checks = [{"name": "count", "query": "SELECT count(*) FROM t", "expect": 101},
              {"name": "newest", "query": "SELECT id, name FROM t WHERE id = 101", "expect": "101|last"},
              {"name": "tail", "query": "SELECT id FROM t WHERE id > 95", "expect_rows": 6}]
    policy(pg.root, "main", checks)  # schedules/ next to the configuration: found without a flag
    report = run(pg, "main", rc=0)
    got = by_name(report)
    assert report["passed"] and [c["name"] for c in report["checks"]] == ["serving", "count", "newest", "tail"]
    assert got["count"]["ok"] and got["count"]["detail"] == "expected first row '101', got '101'"
    assert got["newest"]["ok"] and got["tail"]["ok"] and "6 row(s), got 6" in got["tail"]["detail"]

    checks[0]["expect"] = 999
    checks[2]["expect_rows"] = 2
    policy(pg.root, "main", checks)
    report = run(pg, "main", rc=13)
    got = by_name(report)
    assert not report["passed"] and report["error"] is None and got["serving"]["ok"] and got["newest"]["ok"]
    assert not got["count"]["ok"] and got["count"]["detail"] == "expected first row '999', got '101'"
    assert not got["tail"]["ok"] and got["tail"]["detail"] == "expected 2 row(s), got 6"
    assert "check count failed: expected first row '999', got '101'" in report["failures"]

    policy(pg.root, "main", [{"name": "write", "query": "DELETE FROM t", "expect_rows": 0}])
    got = by_name(run(pg, "main", rc=13))["write"]  # a check cannot change what it checks
    assert not got["ok"] and "read-only transaction" in got["detail"], got


APP = r'''
import http.server, os, sys
import redis
port, key = int(sys.argv[1]), sys.argv[2]
client = redis.Redis.from_url(os.environ["DRKIT_RESTORED_URL"], socket_timeout=2)
print("app up on", port, "reading", os.environ["DRKIT_RESTORED_URL"], flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            ok = client.get(key) == b"yes"
        except redis.RedisError:
            ok = False
        self.send_response(200 if ok else 500)
        self.end_headers()

http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_command_and_http_checks_against_the_operators_app(renv) -> None:  # noqa: ANN001, F811
    import redis as redis_py

    c = redis_py.Redis(host="127.0.0.1", port=renv.primary.port, password=PASSWORD)
    c.flushall()
    c.set("config:version", "7")
    c.set("health:ok", "yes")
    c.hset("user:1", mapping={"name": "Ada"})
    renv.drkit("backup", "cache")
    app_py = renv.root / "app.py"
    app_py.write_text(APP)
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    app = {"command": [sys.executable, str(app_py), str(port), "health:ok"], "env": {"APP_MODE": "drill"},
           "ready_timeout": "20s"}
    checks = [{"name": "version", "query": "GET config:version", "expect": "7"},
              {"name": "user", "query": ["HGET", "user:1", "name"], "expect": "Ada"},
              {"name": "health", "url": url, "expect_status": 200}]
    elsewhere = policy(renv.root / "elsewhere", "cache", checks, app)  # found through --schedules
    report = run(renv, "cache", "--schedules", str(elsewhere), rc=0)
    got = by_name(report)
    assert report["passed"], report["failures"]
    assert got["version"]["ok"] and got["user"]["ok"] and "'Ada', got 'Ada'" in got["user"]["detail"]
    assert got["health"]["ok"] and "got it 2 times in a row" in got["health"]["detail"]
    a = report["app"]
    assert a["started"] and a["end"] == "stopped (SIGTERM)" and "DRKIT_RESTORED_URL" in a["env"]
    assert f"app up on {port} reading redis://127.0.0.1:" in a["output"]  # its output, captured
    assert PASSWORD not in json.dumps(report) and "REDIS_PW" not in a["env"]  # drkit's secrets stay home
    try:
        os.kill(a["pid"], 0)
        raise AssertionError("the app is still running after the drill")
    except ProcessLookupError:
        pass

    # The app answers 500 when it cannot read its key from the restored instance: the drill fails.
    app = {**app, "command": [sys.executable, str(app_py), str(port), "no:such:key"], "ready_timeout": "3s"}
    report = run(renv, "cache", "--schedules", str(policy(elsewhere.parent, "cache", checks, app)), rc=13)
    got = by_name(report)
    assert got["version"]["ok"] and not got["health"]["ok"]
    assert "expected status 200 2 times in a row within 3 s, got status 500" in got["health"]["detail"]
    assert any(f.startswith("check health failed") for f in report["failures"])


def test_a_mongodb_find_check(menv: MongoEnv) -> None:  # noqa: F811
    menv.src.c.insert_many([{"_id": i, "kind": "a" if i % 2 else "b"} for i in range(10)])
    menv.drkit("backup", "m")
    checks = [{"name": "odd", "query": {"db": menv.db, "collection": "c", "filter": {"kind": "a"}}, "expect_rows": 5},
              {"name": "first", "query": {"collection": "c", "filter": {"_id": 3}}, "database": menv.db,
               "expect": '{"_id": 3, "kind": "a"}'},
              {"name": "count", "query": {"db": menv.db, "collection": "c", "pipeline": [{"$count": "n"}]},
               "expect": '{"n": 10}'}]
    policy(menv.root, "m", checks)
    report = run(menv, "m", rc=0)
    assert report["passed"] and all(c["ok"] for c in report["checks"]), report["checks"]
    assert len(report["checks"]) == 4
    # A drill that fails before its checks lists them as not run (an auditor sees what was skipped).
    r = menv.drkit("drill", "m", "--json", "--point-in-time", "2000-01-01T00:00:00Z", check=False)
    assert r.returncode == 13, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["error"] is not None and [c["name"] for c in report["checks"]] == ["serving", "odd", "first", "count"]
    assert all(not c["ok"] for c in report["checks"])
    assert by_name(report)["odd"]["detail"] == "not run: the drill failed before its checks"
