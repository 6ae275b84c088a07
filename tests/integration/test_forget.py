"""``drkit forget`` against a real Redis and a real repository: several snapshots, a policy,
the dry run against the real run, the kept backups restored and compared with what was written."""

from __future__ import annotations

import json

import pytest
import redis
from pgenv import workdir
from test_redis_dumper import PASSWORD, RedisEnv, redis_env

from drkit.config import load_config
from drkit.ops import open_repository
from drkit.repository import leases
from drkit.sandbox.redis import start_redis


@pytest.fixture
def fenv():
    root = workdir("redis-forget")
    primary = start_redis(root / "redis", password=PASSWORD)
    src = {"type": "redis", "url": primary.url, "password_env": "REDIS_PW"}
    with redis_env(root, primary, cache={**src, "retention": {"keep_last": 2}}, plain=src) as env:
        yield env


def _backups(env: RedisEnv, source: str, n: int) -> dict[str, dict[bytes, bytes]]:
    """``n`` snapshots of ``source``, each after writing a different generation; id -> contents."""
    out = {}
    with env.primary.client() as c:
        for gen in range(n):
            c.flushall()
            c.mset({f"g{gen}:k{i}": f"v{gen}-{i}" for i in range(50 + gen)})
            c.set("generation", gen)
            contents = {k: c.get(k) for k in c.keys("*")}
            out[json.loads(env.drkit("backup", source, "--json").stdout)["id"]] = contents
    return out


def _list(env: RedisEnv, source: str) -> dict:
    return json.loads(env.drkit("list", source, "--json").stdout)[0]


def test_forget_dry_run_equals_real_run_and_kept_backups_restore(fenv: RedisEnv):
    written = _backups(fenv, "cache", 4)
    ids = list(written)
    before = _list(fenv, "cache")
    assert sorted(b["id"] for b in before["backups"]) == sorted(ids)

    dry = json.loads(fenv.drkit("forget", "cache", "--grace", "0", "--dry-run", "--json").stdout)
    [entry] = dry["sources"]
    would = [m["id"] for m in entry["remove"]["manifests"]]
    assert sorted(would) == sorted(ids[:2])
    assert all(m["reason"] == "no kept restore point needs it" for m in entry["remove"]["manifests"])
    assert {m["id"] for m in entry["keep"]["manifests"]} == set(ids[2:])
    assert all(m["reasons"] for m in entry["keep"]["manifests"])
    # The two old snapshots' instants are reported as becoming unreachable.
    lost = {(u["start"], u["end"]) for u in entry["unreachable"]}
    old_points = {(p["start"], p["end"]) for p in before["restore_points"] if p["backup"] in ids[:2]}
    assert lost == old_points
    assert sorted(b["id"] for b in _list(fenv, "cache")["backups"]) == sorted(ids)  # a dry run removes nothing
    text = fenv.drkit("forget", "cache", "--grace", "0", "--dry-run").stdout
    assert all(f"would remove backup {i}" in text for i in ids[:2]) and "would become unreachable" in text

    real = json.loads(fenv.drkit("forget", "cache", "--grace", "0", "--json").stdout)
    [done] = real["sources"]
    assert sorted(done["removed"]["manifests"]) == sorted(would)
    assert done["removed"]["failed"] == []
    after = _list(fenv, "cache")
    assert sorted(b["id"] for b in after["backups"]) == sorted(ids[2:])
    # The kept backups still restore, with exactly what was written before each.
    for bid in ids[2:]:
        target = fenv.root / f"restored-{bid}"
        res = json.loads(fenv.drkit("restore", "cache", "--backup", bid, "--target-dir", str(target),
                                    "--start", "--json", "--no-sync").stdout)
        fenv.started_pids.append(res["pid"])
        with redis.Redis(port=res["port"]) as r:
            assert {k: r.get(k) for k in r.keys("*")} == written[bid]
    # Idempotent: nothing more to remove.
    again = json.loads(fenv.drkit("forget", "cache", "--grace", "0", "--json").stdout)["sources"][0]
    assert again["remove"]["manifests"] == [] and again["removed"]["manifests"] == []


def test_grace_keeps_young_backups(fenv: RedisEnv):
    ids = list(_backups(fenv, "cache", 3))
    out = json.loads(fenv.drkit("forget", "cache", "--json").stdout)["sources"][0]  # default grace 24 h
    assert out["removed"]["manifests"] == []
    assert sorted(b["id"] for b in _list(fenv, "cache")["backups"]) == sorted(ids)


def test_source_without_policy_is_refused_and_loses_nothing(fenv: RedisEnv):
    ids = list(_backups(fenv, "plain", 2))
    proc = fenv.drkit("forget", "plain", "--grace", "0", check=False)
    assert proc.returncode == 2
    assert "no retention policy" in proc.stderr and "nothing was removed" in proc.stderr
    # Without SOURCE, only the sources with a policy are acted on.
    out = json.loads(fenv.drkit("forget", "--grace", "0", "--json").stdout)
    assert [s["source"] for s in out["sources"]] == ["cache"]
    assert sorted(b["id"] for b in _list(fenv, "plain")["backups"]) == sorted(ids)
    # Flags make a policy for one run.
    out = json.loads(fenv.drkit("forget", "plain", "--keep-last", "1", "--grace", "0", "--json").stdout)
    assert out["sources"][0]["removed"]["manifests"] == [ids[0]]
    assert [b["id"] for b in _list(fenv, "plain")["backups"]] == [ids[1]]


def test_live_prune_lease_refuses_with_exit_6(fenv: RedisEnv):
    ids = list(_backups(fenv, "cache", 3))
    repo = open_repository(load_config(fenv.config_path))
    held = leases.acquire(repo, "prune", "repository", 600, "a test prune")
    try:
        proc = fenv.drkit("forget", "cache", "--grace", "0", check=False)
        assert proc.returncode == 6, proc.stderr
        assert "already running" in proc.stderr
    finally:
        leases.release(repo, held)
    assert sorted(b["id"] for b in _list(fenv, "cache")["backups"]) == sorted(ids)
    fenv.drkit("forget", "cache", "--grace", "0")  # released: it runs
    assert len(_list(fenv, "cache")["backups"]) == 2


# -- PostgreSQL: base backups and archived WAL ----------------------------------------------------

@pytest.fixture
def pgenv():
    from pgenv import make_pg_env

    env = make_pg_env("forget")
    yield env
    env.close()


def _rows(env, target, port: int) -> list[int]:
    with env.restored_conn(target, port) as c:
        return [r[0] for r in c.execute("SELECT id FROM t ORDER BY id").fetchall()]


def test_postgres_forget_removes_exactly_what_the_dry_run_listed_and_kept_bases_restore(pgenv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
    ids = []
    for gen in range(3):
        with pgenv.conn() as c:
            c.execute("INSERT INTO t SELECT generate_series(%s::int, %s::int)", (gen * 5 + 1, gen * 5 + 5))
        pgenv.switch_and_wait_archived()
        ids.append(json.loads(pgenv.drkit("backup", "main", "--json").stdout)["id"])
    with pgenv.conn() as c:
        c.execute("INSERT INTO t SELECT generate_series(16, 20)")
    pgenv.switch_and_wait_archived()
    repo = open_repository(load_config(pgenv.config_path))
    logs_before = set(repo.list_log_names("main"))

    # Every time since the first base is inside a one-hour PITR window: it stays restorable through
    # the first base and all WAL after it; the middle base is redundant (its time is in that range).
    pitr = json.loads(pgenv.drkit("forget", "main", "--keep-last", "1", "--pitr-window", "1h", "--grace", "0",
                                  "--dry-run", "--json").stdout)["sources"][0]
    assert [m["id"] for m in pitr["remove"]["manifests"]] == [ids[1]] and pitr["unreachable"] == []
    assert {m["id"] for m in pitr["keep"]["manifests"]} == {ids[0], ids[2]}
    assert any("pitr_window 1h" in r for p in pitr["keep"]["restore_points"] if p["backup"] == ids[0]
               for r in p["reasons"])
    segments_after_first = {n for n in logs_before if "." not in n and n > pitr["keep"]["logs"]["first"]}
    assert segments_after_first.isdisjoint(pitr["remove"]["logs"]["names"])

    dry = json.loads(pgenv.drkit("forget", "main", "--keep-last", "2", "--grace", "0", "--dry-run",
                                 "--json").stdout)["sources"][0]
    would_m = [m["id"] for m in dry["remove"]["manifests"]]
    would_l = dry["remove"]["logs"]["names"]
    assert would_m == [ids[0]]
    # The base backups carry their own WAL: with no PITR rule only the latest state (the newest base
    # and the WAL after it) needs archived WAL; everything older goes.
    keep_first = dry["keep"]["logs"]["first"]
    assert keep_first is not None and dry["remove"]["logs"]["count"] == len(would_l)
    assert set(would_l) == {n for n in logs_before if n < keep_first}
    assert dry["unreachable"]  # the point-in-time range between and after the bases goes
    assert set(repo.list_log_names("main")) == logs_before

    real = json.loads(pgenv.drkit("forget", "main", "--keep-last", "2", "--grace", "0",
                                  "--json").stdout)["sources"][0]
    assert real["removed"]["manifests"] == would_m
    assert real["removed"]["logs"] == len(would_l) and real["removed"]["failed"] == []
    assert set(repo.list_log_names("main")) == logs_before - set(would_l)
    listed = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
    assert sorted(b["id"] for b in listed["backups"]) == sorted(ids[1:])
    # What forget removed on purpose is no damage: no gap, and verify passes.
    assert listed["gaps"] == [] and listed["damaged"] == []
    verified = pgenv.drkit("verify", "--json", check=False)
    assert verified.returncode == 0, verified.stdout
    # The latest state survived: new WAL continues the newest chain and a latest restore reaches it.
    with pgenv.conn() as c:
        c.execute("INSERT INTO t SELECT generate_series(21, 25)")
    pgenv.switch_and_wait_archived()
    target = pgenv.root / "restored-latest"
    res = json.loads(pgenv.drkit("restore", "main", "--target-dir", str(target), "--start", "--json",
                                 "--no-sync").stdout)
    try:
        assert _rows(pgenv, target, res["port"]) == list(range(1, 26))
    finally:
        pgenv.stop_datadir(target)
    for bid, want in ((ids[1], list(range(1, 11))), (ids[2], list(range(1, 16)))):
        target = pgenv.root / f"restored-{bid}"
        res = json.loads(pgenv.drkit("restore", "main", "--backup", bid, "--target-dir", str(target),
                                     "--start", "--json", "--no-sync").stdout)
        try:
            assert _rows(pgenv, target, res["port"]) == want
        finally:
            pgenv.stop_datadir(target)
