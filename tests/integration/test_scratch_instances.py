"""``Dumper.scratch`` for PostgreSQL and Redis (MongoDB's is tested in test_mongodb_dumper.py):
a new, empty server in a work directory, and the server of a restored directory holding the
backed-up data; ``stop()`` leaves no process behind."""

from __future__ import annotations

import json

import psycopg
import redis
from pgenv import PgEnv, make_pg_env
from test_redis_dumper import PASSWORD, renv  # noqa: F401 - the fixture

from drkit.config import load_config
from drkit.dumpers import dumper_for
from drkit.proc import pid_alive


def test_postgres_scratch_empty_and_over_a_restored_directory() -> None:
    env: PgEnv = make_pg_env("scratch-pg")
    try:
        with env.conn() as c:
            c.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1234) g")
        backup = json.loads(env.drkit("backup", "main", "--json").stdout)
        dumper = dumper_for(load_config(env.config_path), "main")

        empty = dumper.scratch(env.root / "empty")
        try:
            assert empty.kind == "postgres" and empty.alive()
            with psycopg.connect(empty.url, autocommit=True) as c:
                assert c.execute("SELECT count(*) FROM pg_database WHERE NOT datistemplate").fetchone()[0] == 1
                assert c.execute("SHOW listen_addresses").fetchone()[0] == ""  # its socket only
        finally:
            empty.stop()
        assert not empty.alive() and not any(pid_alive(p) for p in empty.pids)

        target = env.root / "restored"
        env.drkit("restore", "main", "--backup", backup["id"], "--target-dir", str(target))
        inst = dumper.scratch(env.root / "unused", restored=target)
        try:
            with psycopg.connect(inst.url, autocommit=True) as c:
                assert c.execute("SELECT count(*), sum(id) FROM t").fetchone() == (1234, sum(range(1, 1235)))
                assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        finally:
            inst.stop()
        assert not inst.alive()
    finally:
        env.close()


def test_redis_scratch_empty_and_over_a_restored_directory(renv) -> None:  # noqa: ANN001, F811
    c = redis.Redis(host="127.0.0.1", port=renv.primary.port, password=PASSWORD)
    c.flushall()
    for i in range(30):
        c.set(f"k{i}", i)
    backup = json.loads(renv.drkit("backup", "cache", "--json").stdout)
    dumper = dumper_for(load_config(renv.config_path), "cache")

    empty = dumper.scratch(renv.root / "scratch-empty")
    try:
        with redis.Redis.from_url(empty.url) as r:
            assert r.ping() and r.dbsize() == 0
    finally:
        empty.stop()
    assert not empty.alive()

    target = renv.root / "scratch-restored"
    renv.drkit("restore", "cache", "--backup", backup["id"], "--target-dir", str(target))
    inst = dumper.scratch(renv.root / "unused", restored=target)
    try:
        with redis.Redis.from_url(inst.url) as r:
            assert r.dbsize() == 30 and r.get("k7") == b"7"
    finally:
        inst.stop()
    assert not inst.alive()
