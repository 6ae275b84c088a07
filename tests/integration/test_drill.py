"""``drkit drill`` against real servers: a healthy drill passes with an RPO that matches the last
commit and RTO phases that add up; a damaged repository or a missed target exits 13 naming why;
the drill's record is stored in the repository."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pgenv import PgEnv, make_pg_env
from test_mongodb_dumper import MongoEnv, menv  # noqa: F401 - the fixture
from test_redis_dumper import renv  # noqa: F401 - the fixture

from drkit import ops
from drkit.config import load_config
from drkit.repository.drills import list_drills
from drkit.repository.format import pack_key


def drill(env, *args: str, check_rc: int = 0) -> dict:  # noqa: ANN001
    r = env.drkit("drill", *args, "--json", check=False)
    assert r.returncode == check_rc, r.stdout + r.stderr
    return json.loads(r.stdout)


def assert_measured(report: dict, wall: float) -> None:
    """RTO phases add up to the RTO, which is within the measured wall time of the command."""
    assert report["rto_seconds"] == pytest.approx(sum(report["phases"].values()), abs=0.01)
    assert 0 < report["rto_seconds"] <= wall


def test_mongodb_drill_passes_and_measures(menv: MongoEnv) -> None:  # noqa: F811
    menv.src.c.insert_many([{"_id": i} for i in range(50)])
    menv.drkit("backup", "m")
    menv.src.c.insert_one({"_id": "last"})
    last_commit = datetime.now(UTC)
    time.sleep(0.2)
    menv.drkit("backup", "m", "--type", "incremental")
    shipped = datetime.now(UTC)
    t0 = time.monotonic()
    report = drill(menv, "m")
    wall = time.monotonic() - t0
    assert report["passed"], report["failures"]
    disaster = datetime.fromisoformat(report["disaster_at"].replace("Z", "+00:00"))
    # RPO = D - newest safe time; the newest safe time lies between the last commit and the shipping.
    assert (disaster - shipped).total_seconds() - 1 <= report["rpo_seconds"] <= (disaster - last_commit).total_seconds() + 1
    assert_measured(report, wall)
    assert report["facts"]["counts"][f"{menv.db}.c"] == 51  # the instance served what was committed
    repo = ops.open_repository(load_config(menv.config))
    stored, bad = list_drills(repo, "m")
    assert not bad and [d["id"] for d in stored] == [report["id"]] and stored[0]["passed"]
    assert not list(repo.storage.list("leases/read/"))  # its read lease is gone


def test_a_missed_target_exits_13(menv: MongoEnv) -> None:  # noqa: F811
    menv.src.c.insert_one({"_id": 1})
    menv.drkit("backup", "m")
    report = drill(menv, "m", "--rto-target", "0.001s", check_rc=13)
    assert not report["passed"] and any("RTO" in f for f in report["failures"])
    time.sleep(1.5)
    report = drill(menv, "m", "--rpo-target", "1s", check_rc=13)
    assert any("RPO" in f for f in report["failures"])


def test_a_drill_on_a_damaged_repository_fails_naming_the_cause(menv: MongoEnv) -> None:  # noqa: F811
    menv.src.c.insert_many([{"_id": i, "pad": "x" * 100} for i in range(100)])
    backup = json.loads(menv.drkit("backup", "m", "--json").stdout)["id"]
    repo = ops.open_repository(load_config(menv.config))
    chunk = repo.get_manifest(backup, "m").stream(f"data/{menv.db}/c").chunks[0]
    pack = menv.root / "repo" / pack_key(chunk[1])
    data = bytearray(pack.read_bytes())
    data[int(chunk[2]) + int(chunk[3]) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    report = drill(menv, "m", check_rc=13)
    assert report["error"]["exit_code"] == 5 and chunk[1] in report["error"]["message"]
    assert any("failed" in f for f in report["failures"])
    # A wrong key: the drill cannot open the repository at all -- exit 4, nothing stored.
    cfg = yaml.safe_load(menv.config.read_text())
    wrong = menv.root / "wrong.key"
    wrong.write_bytes(b"00" * 32)
    other = menv.root / "wrong.yaml"
    other.write_text(yaml.safe_dump({**cfg, "encryption": {"key_file": str(wrong)}}))
    import subprocess

    from pgenv import DRKIT

    r = subprocess.run([DRKIT, "--config", str(other), "drill", "m"], capture_output=True, text=True)
    assert r.returncode == 4, r.stderr


@pytest.fixture
def pg():  # noqa: ANN201
    env = make_pg_env("drill")
    yield env
    env.close()


def test_postgres_drill_passes_with_archived_wal(pg: PgEnv) -> None:
    with pg.conn() as c:
        c.execute("CREATE TABLE t (id int)")
        c.execute("INSERT INTO t SELECT generate_series(1, 100)")
    pg.drkit("backup", "main")
    with pg.conn() as c:
        c.execute("INSERT INTO t VALUES (101)")
    pg.switch_and_wait_archived()
    t0 = time.monotonic()
    r = pg.drkit("drill", "main", "--json", check=False)
    wall = time.monotonic() - t0
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["passed"], r.stdout + r.stderr
    assert_measured(report, wall)
    assert report["facts"]["databases"] >= 1 and report["facts"]["in_recovery"] is False
    assert report["runbook"] == "runbooks/postgres-recovery.md"  # the runbook this drill exercises ...
    assert (Path(__file__).resolve().parents[2] / report["runbook"]).is_file()  # ... exists


def test_redis_drill_passes_and_counts_the_keys(renv) -> None:  # noqa: ANN001, F811
    import redis as redis_py
    from test_redis_dumper import PASSWORD

    c = redis_py.Redis(host="127.0.0.1", port=renv.primary.port, password=PASSWORD)
    c.flushall()
    for i in range(40):
        c.set(f"k{i}", i)
    renv.drkit("backup", "cache")
    t0 = time.monotonic()
    r = renv.drkit("drill", "cache", "--json", check=False)
    wall = time.monotonic() - t0
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["passed"], r.stdout + r.stderr
    assert report["facts"]["keys"] == 40 and report["facts"]["role"] == "master"
    assert report["runbook"] == "runbooks/redis-recovery.md"
    lb = report["rpo_lookback"]  # over the week: the worst is at least the RPO now, p95 in between
    assert lb["window_seconds"] == 7 * 86400 and lb["commits_in_window"] >= 1
    assert lb["worst_seconds"] >= report["rpo_seconds"] - 0.01 and lb["p95_seconds"] <= lb["worst_seconds"]
    assert lb["seconds_without_a_restore_point"] > 0  # the week before this source's first backup
    assert_measured(report, wall)


def test_plan_restore_predicts_from_the_stored_drills(menv: MongoEnv) -> None:  # noqa: F811
    from drkit.repository.drills import put_drill

    menv.src.c.insert_many([{"_id": i, "pad": "p" * 300} for i in range(300)])
    menv.drkit("backup", "m")
    menv.src.c.insert_one({"_id": "late"})
    menv.drkit("backup", "m", "--type", "incremental")
    before = json.loads(menv.drkit("plan", "restore", "m", "--json").stdout)
    assert "stated default" in before["basis"]
    assert before["bytes"] == before["backup_bytes"] + before["log_bytes"] and before["log_records"] == 1
    assert before["predicted_rto_seconds"] == pytest.approx(before["bytes"] / 20e6, abs=0.1)
    repo = ops.open_repository(load_config(menv.config))
    for i, (size, rto, passed) in enumerate([(1e6, 1.0, True), (3e6, 1.0, True), (1e9, 1.0, False)]):
        put_drill(repo, "m", f"20261201T00000{i}Z-00000{i}", {"passed": passed, "rto_seconds": rto,
                                                              "plan": {"bytes": size}, "finished": "2026-12-01T00:00:00Z"})
    plan = json.loads(menv.drkit("plan", "restore", "m", "--json").stdout)
    assert plan["throughput_bytes_per_second"] == pytest.approx(2e6)  # median of the passed drills: 1 and 3 MB/s
    assert plan["predicted_rto_seconds"] == pytest.approx(plan["bytes"] / 2e6, abs=0.1)
    assert "2 passed drill" in plan["basis"]
    report = drill(menv, "m")
    assert report["plan"]["bytes"] == plan["bytes"]  # the drill records what it planned
