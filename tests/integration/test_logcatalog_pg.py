"""Sealed log catalog objects against a real PostgreSQL: WAL archived, sealed into catalog
objects, the single records deleted, and a point-in-time restore through the sealed records."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from pgenv import PgEnv, make_pg_env

SEAL = """
import json, sys
from datetime import UTC, datetime, timedelta
from drkit.config import load_config
from drkit.ops import open_repository
repo = open_repository(load_config(sys.argv[1]))
res = repo.seal_log_catalog("main", before=datetime.now(UTC) + timedelta(days=2), delete_replaced=True)
print(json.dumps({"written": res.written, "sealed": res.sealed, "deleted": res.deleted,
                  "not_deleted": res.not_deleted}))
"""


@pytest.fixture
def pgenv():
    env = make_pg_env("logcat")
    yield env
    env.close()


def _commit_rows(env: PgEnv, first: int, count: int) -> list[tuple[int, object]]:
    marks = []
    with env.conn() as c:
        for i in range(first, first + count):
            c.execute("INSERT INTO events (id, payload) VALUES (%s, %s)", (i, f"event {i}"))
            marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
            time.sleep(0.02)
    return marks


def test_restore_to_a_point_in_time_through_sealed_log_records(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    _commit_rows(pgenv, 1, 10)
    pgenv.drkit("backup", "main")
    marks = []
    for k in range(3):  # several WAL segments after the backup
        marks += _commit_rows(pgenv, 100 + 100 * k, 10)
        pgenv.switch_and_wait_archived()
    before = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]

    # Seal as the archiver's user (the repository's files belong to it), deleting the singles.
    proc = subprocess.run(["runuser", "-u", "postgres", "--", sys.executable, "-c", SEAL, str(pgenv.config_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["written"] and res["sealed"] >= 4 and res["not_deleted"] == []
    assert len(res["deleted"]) == res["sealed"]
    repo_dir = pgenv.root / "repo"
    assert not [p for p in (repo_dir / "logs" / "main").rglob("*") if p.is_file()]
    assert len([p for p in (repo_dir / "logcat" / "main").iterdir()]) == len(res["written"])

    after = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
    assert after["window"] == before["window"] and after["restore_points"] == before["restore_points"]
    assert pgenv.drkit("verify").returncode == 0

    row_id, t = marks[len(marks) // 2]
    target = pgenv.root / "restore"
    out = json.loads(pgenv.drkit("restore", "main", "--point-in-time", t.isoformat(), "--target-dir", str(target),
                                 "--start", "--json").stdout)
    try:
        with pgenv.restored_conn(target, out["port"]) as c:
            ids = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]
    finally:
        pgenv.stop_datadir(target)
    assert ids == list(range(1, 11)) + [i for i, _ in marks if i <= row_id]
