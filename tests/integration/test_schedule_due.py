"""``drkit schedule due`` against a real server: runs what is due once, skips what is not, waits
out (then refuses) a source whose previous run still holds its lease, and checks continuous
shipping."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_mongodb_dumper import MongoEnv, menv  # noqa: F401 - the fixture
from test_redis_dumper import renv  # noqa: F401 - the fixture

from drkit import ops
from drkit.config import load_config
from drkit.repository import leases


def policy(env: MongoEnv, **fields: object) -> Path:
    d = env.root / "schedules"
    d.mkdir(exist_ok=True)
    body = {"sources": ["m"], "full": "0 0 1 1 *", "incremental": "0 0 1 1 *", **fields}
    (d / "p.yaml").write_text(yaml.safe_dump(body))
    return d


def due(env: MongoEnv, *args: str, check: bool = True) -> tuple[int, dict]:
    r = env.drkit("schedule", "due", "--json", *args, check=check)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}


def actions(report: dict) -> dict[str, str]:
    return {j["job"]: j["action"] for j in report["jobs"]}


def test_due_runs_missed_jobs_once_then_nothing(menv: MongoEnv) -> None:  # noqa: F811
    policy(menv, retention={"keep_last": 1})
    menv.src.c.insert_many([{"_id": i} for i in range(5)])
    # Both jobs last fired on January 1st and never ran: each runs once, not once per miss.
    rc, report = due(menv)
    assert rc == 0 and actions(report) == {"full": "ran", "incremental": "ran"}, report
    assert report["retention"] and report["retention"][0]["source"] == "m"
    rc, report = due(menv)
    assert rc == 0 and actions(report) == {"full": "not due", "incremental": "not due"}, report
    listing = menv.list()
    assert len([b for b in listing["backups"] if b["type"] == "full"]) == 1


def test_due_waits_for_the_previous_run_then_exits_6(menv: MongoEnv) -> None:  # noqa: F811
    policy(menv)
    repo = ops.open_repository(load_config(menv.config))
    held = leases.acquire(repo, "job", "m", 600, "a test holding the job lease")
    try:
        rc, report = due(menv, "--wait", "1", check=False)
        assert rc == 6 and actions(report) == {"all": "locked"}, report
        assert menv.list()["backups"] == []  # nothing ran
    finally:
        leases.release(repo, held)
    rc, report = due(menv)
    assert rc == 0 and actions(report)["full"] == "ran"


def test_continuous_policy_checks_that_shipping_is_current(menv: MongoEnv) -> None:  # noqa: F811
    policy(menv, continuous=True, targets={"rpo": "1h"})
    menv.src.c.insert_one({"_id": 1})
    rc, report = due(menv)
    assert rc == 0 and actions(report) == {"full": "ran", "incremental": "checked"}, report
    policy(menv, continuous=True, targets={"rpo": "1s"})
    import time

    time.sleep(2.5)  # nothing shipped the oplog meanwhile: the newest restorable time falls behind
    rc, report = due(menv, check=False)
    assert rc == 9 and actions(report)["incremental"] == "failed", report
    assert "not current" in json.dumps(report)


def test_due_against_postgres_and_redis(tmp_path: Path, renv) -> None:  # noqa: ANN001, F811
    """PostgreSQL: the full runs once; its 'incremental' is WAL archiving, so the job checks it.
    Redis without data_dir: the same (its incrementals are the follower's)."""
    from pgenv import make_pg_env

    pg = make_pg_env("due")
    try:
        d = pg.config_path.parent / "schedules"
        d.mkdir()
        (d / "pg.yaml").write_text(yaml.safe_dump({"sources": ["main"], "full": "0 0 1 1 *",
                                                   "incremental": "*/5 * * * *", "targets": {"rpo": "1h"}}))
        pg.switch_and_wait_archived()
        r = pg.drkit("schedule", "due", "--json")
        report = json.loads(r.stdout)
        assert actions(report) == {"full": "ran", "incremental": "checked"}, report
        r = pg.drkit("schedule", "due", "--json")
        assert actions(json.loads(r.stdout))["full"] == "not due"
    finally:
        pg.close()
    d = renv.config_path.parent / "schedules"
    d.mkdir()
    (d / "r.yaml").write_text(yaml.safe_dump({"sources": ["cache"], "full": "0 0 1 1 *", "targets": {"rpo": "1h"}}))
    report = json.loads(renv.drkit("schedule", "due", "--json").stdout)
    assert actions(report) == {"full": "ran"}
    report = json.loads(renv.drkit("schedule", "due", "--json").stdout)
    assert actions(report) == {"full": "not due"}


def test_due_records_how_long_it_waited_for_the_job_lease(menv: MongoEnv) -> None:  # noqa: F811
    """``drkit_lock_wait_seconds{lease="job/m"}``: a second run waiting behind a held lease reports
    the wait (through --textfile, as the push and the daemon do), also when it gives up."""
    import threading
    import time

    from prometheus_client.parser import text_string_to_metric_families

    def waits(path: Path) -> dict[tuple, float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(path.read_text()) for s in f.samples}

    policy(menv)
    menv.src.c.insert_one({"_id": 1})
    repo = ops.open_repository(load_config(menv.config))
    prom = menv.root / "due.prom"
    lease_key = ("drkit_lock_wait_seconds", (("lease", "job/m"),))
    held = leases.acquire(repo, "job", "m", 600, "a test holding the job lease")
    try:
        rc, report = due(menv, "--wait", "1", "--textfile", str(prom), check=False)
        assert rc == 6 and actions(report) == {"all": "locked"}, report
        got = waits(prom)
        assert 1.0 <= got[lease_key] < 10, got
        assert got[("drkit_job_last_exit_code", (("source", "m"), ("type", "all")))] == 6
    finally:
        leases.release(repo, held)
    held = leases.acquire(repo, "job", "m", 600, "a test holding the job lease")
    released = threading.Timer(3.0, leases.release, (repo, held))
    t0 = time.monotonic()
    released.start()
    try:
        rc, report = due(menv, "--wait", "60", "--textfile", str(prom))
    finally:
        released.join()
    took = time.monotonic() - t0
    assert rc == 0 and actions(report)["full"] == "ran", report
    got = waits(prom)
    assert 3.0 <= got[lease_key] <= took, (got[lease_key], took)
    assert got[("drkit_job_last_exit_code", (("source", "m"), ("type", "full")))] == 0
