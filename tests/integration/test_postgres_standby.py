"""Full backups read from a streaming standby at node-local speed (``backup_from: standby``),
while the primary takes writes: restored to a point in time and to the latest point, the rows
are what the primary committed.  A standby that lags beyond ``max_standby_lag`` is refused
(nothing stored), and ``prefer-standby`` then backs up the primary instead."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import psycopg
import pytest
import yaml
from pgenv import PgEnv, make_pg_env

from drkit.sandbox.postgres import start_standby


@pytest.fixture(scope="module")
def sbenv():
    env = make_pg_env("sbnode")
    try:
        standby = start_standby(env.pg, env.root / "standby")
    except BaseException:
        env.close()
        raise
    env.restored.append(standby)
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["sources"]["main"].update({"standby_dsn": standby.dsn, "backup_from": "standby",
                                   "data_dir": str(standby.data_dir)})
    env.config_path.write_text(yaml.safe_dump(cfg))
    with env.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g")
        c.execute("INSERT INTO events SELECT g, 'before' FROM generate_series(1, 20) g")
    env.standby = standby  # type: ignore[attr-defined]
    yield env
    env.close()


def _with(env: PgEnv, **settings: object) -> str:
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["sources"]["main"].update(settings)
    path = env.root / f"cfg-{len(list(env.root.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _backup_ids(env: PgEnv) -> list[str]:
    return [b["id"] for e in json.loads(env.drkit("list", "--json").stdout) for b in e.get("backups", [])]


class _Writer(threading.Thread):
    def __init__(self, env: PgEnv, first: int) -> None:
        super().__init__(daemon=True)
        self.env, self.next_id, self.stop_flag = env, first, threading.Event()
        self.marks: list[tuple[int, datetime]] = []

    def run(self) -> None:
        with self.env.conn() as c:
            while not self.stop_flag.is_set():
                c.execute("INSERT INTO events VALUES (%s, 'during')", (self.next_id,))
                c.execute("UPDATE filler SET h = md5(h) WHERE id %% 400 = %s", (self.next_id % 400,))
                self.marks.append((self.next_id, c.execute("SELECT clock_timestamp()").fetchone()[0]))
                self.next_id += 1
                time.sleep(0.01)


def _ids(env: PgEnv, tag: str, *how: str) -> list[int]:
    target = env.root / tag
    res = json.loads(env.drkit("restore", "main", *how, "--target-dir", str(target), "--start", "--json").stdout)
    try:
        with env.restored_conn(target, res["port"]) as c:
            assert c.execute("SELECT count(*) FROM filler").fetchone()[0] == 200000
            return [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")]
    finally:
        env.stop_datadir(target)


def test_standby_backup_under_primary_writes_restores_what_the_primary_committed(sbenv: PgEnv):
    env = sbenv
    writer = _Writer(env, 1000)
    writer.start()
    try:
        out = json.loads(env.drkit("backup", "main", "--json").stdout)
        time.sleep(1.5)
    finally:
        writer.stop_flag.set()
        writer.join()
    md = out["metadata"]
    assert md["method"] == "local" and md["from_standby"] is True and md["archiving"] is True
    assert md["standby"] and md["standby_lag_seconds"] is not None and md["standby_lag_seconds"] < 60
    assert writer.marks, "the primary committed nothing during the backup"
    env.switch_and_wait_archived()
    with env.conn() as c:
        committed = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")]
    assert committed == list(range(1, 21)) + [i for i, _ in writer.marks]

    after = [(i, t) for i, t in writer.marks if t > datetime.fromisoformat(md["stop_time"])]
    assert len(after) >= 5, "too few commits after the backup"
    mid_id, mid_t = after[len(after) // 2]
    assert _ids(env, "pitr", "--point-in-time", mid_t.isoformat()) == [i for i in committed if i <= mid_id]
    assert _ids(env, "latest") == committed
    own = _ids(env, "own-end", "--backup", out["id"])  # the backup alone: a prefix of the commits
    assert own == committed[: len(own)] and len(own) >= 20
    assert env.drkit("verify", "--json", check=False).returncode == 0


def test_a_lagging_standby_is_refused_and_prefer_standby_backs_up_the_primary(sbenv: PgEnv):
    env = sbenv
    standby = env.standby  # type: ignore[attr-defined]
    with psycopg.connect(standby.dsn, autocommit=True) as s:
        s.execute("SELECT pg_wal_replay_pause()")
    try:
        with env.conn() as c:
            c.execute("INSERT INTO events VALUES (999999, 'after the pause')")
        before = _backup_ids(env)
        proc = env.drkit("--config", _with(env, max_standby_lag="1s"), "backup", "main", check=False)
        assert proc.returncode == 10, proc.stderr
        assert "lags behind the primary" in proc.stderr and "WAL replay is paused" in proc.stderr
        assert "prefer-standby" in proc.stderr
        assert _backup_ids(env) == before

        proc = env.drkit("--config", _with(env, max_standby_lag="1s", backup_from="prefer-standby"),
                         "backup", "main", "--json")
        out = json.loads(proc.stdout)
        md = out["metadata"]
        assert md["from_standby"] is False and "standby" not in md
        assert md["method"] == "pg_basebackup"  # data_dir is the standby's: the primary is read remotely
        assert "backing up the primary" in proc.stderr and "lags behind the primary" in proc.stderr
    finally:
        with psycopg.connect(standby.dsn, autocommit=True) as s:
            s.execute("SELECT pg_wal_replay_resume()")
    env.switch_and_wait_archived()
    ids = _ids(env, "from-primary", "--backup", out["id"])
    assert 999999 in ids


def test_a_standby_that_is_not_one_or_unreachable_is_named(sbenv: PgEnv):
    env = sbenv
    before = _backup_ids(env)
    proc = env.drkit("--config", _with(env, standby_dsn=env.pg.dsn), "backup", "main", check=False)
    assert proc.returncode == 10 and "is not in recovery" in proc.stderr, proc.stderr
    proc = env.drkit("--config", _with(env, standby_dsn="host=127.0.0.1 port=1 user=postgres dbname=postgres"),
                     "backup", "main", check=False)
    assert proc.returncode == 10 and "cannot connect" in proc.stderr, proc.stderr
    proc = env.drkit("--config", _with(env, standby_dsn=None, backup_from="standby"), "backup", "main", check=False)
    assert proc.returncode == 2 and "standby_dsn" in proc.stderr, proc.stderr
    assert _backup_ids(env) == before
