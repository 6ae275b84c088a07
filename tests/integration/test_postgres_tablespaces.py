"""A cluster with a user tablespace outside its data directory (a table, its TOAST and index, a
whole database in it, large objects beside): node-local backup under writes, restored to a point
in time and to the latest point into mapped and default places, compared with the source
(rows, ``pg_dumpall``), checked by ``pg_amcheck --heapallindexed`` and ``pg_checksums --check``,
and never written into the source's own tablespace directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from pgenv import PgEnv, make_pg_env

TOASTED = "(SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 300) g)"


@pytest.fixture(scope="module")
def tsenv():
    env = make_pg_env("tblspc")
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["sources"]["main"]["data_dir"] = str(env.pg.data_dir)
    env.config_path.write_text(yaml.safe_dump(cfg))
    location = env.root / "ts-fast"
    location.mkdir()
    shutil.chown(location, "postgres", "postgres")
    with env.conn() as c:
        c.execute(f"CREATE TABLESPACE fast LOCATION '{location}'")
        c.execute("CREATE TABLE docs (id int PRIMARY KEY USING INDEX TABLESPACE fast, body text) TABLESPACE fast")
        c.execute(f"INSERT INTO docs SELECT i, {TOASTED} FROM generate_series(1, 40) i")
        c.execute("CREATE TABLE plain AS SELECT g AS id FROM generate_series(1, 5000) g")
        c.execute("SELECT lo_from_bytea(4242, convert_to(repeat('large object ', 20000), 'UTF8'))")
        c.execute("CREATE DATABASE inspace TABLESPACE fast")
    with _db(env, "inspace") as c:
        c.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 20000) g")
    env.location = location  # type: ignore[attr-defined]
    yield env
    env.close()


def _db(env: PgEnv, dbname: str):
    import psycopg

    return psycopg.connect(env.pg.dsn.replace("dbname=postgres", f"dbname={dbname}"), autocommit=True)


class _Writer(threading.Thread):
    def __init__(self, env: PgEnv) -> None:
        super().__init__(daemon=True)
        self.env, self.next_id, self.stop_flag = env, 1000, threading.Event()
        self.marks: list[tuple[int, object]] = []

    def run(self) -> None:
        with self.env.conn() as c:
            while not self.stop_flag.is_set():
                c.execute(f"INSERT INTO docs VALUES (%s, {TOASTED})", (self.next_id,))
                self.marks.append((self.next_id, c.execute("SELECT clock_timestamp()").fetchone()[0]))
                self.next_id += 1
                time.sleep(0.02)


def _backup_ids(env: PgEnv) -> list[str]:
    return [b["id"] for e in json.loads(env.drkit("list", "--json").stdout) for b in e.get("backups", [])]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _dumpall(env: PgEnv, *conn: str) -> str:
    out = subprocess.run([str(env.pg.bin_dir / "pg_dumpall"), *conn, "-U", "postgres"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    out = re.sub(r"LOCATION '[^']*'", "LOCATION '<dir>'", out)
    # \restrict/\unrestrict carry a random key per run (pg_dump's psql meta-command guard).
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("-- Dumped", "\\restrict ", "\\unrestrict ")))


def _amcheck(env: PgEnv, host: str, port: int) -> None:
    proc = subprocess.run([str(env.pg.bin_dir / "pg_amcheck"), "-h", host, "-p", str(port), "-U", "postgres",
                           "--all", "--heapallindexed", "--install-missing"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _checksums(env: PgEnv, target: Path) -> None:
    proc = subprocess.run(["runuser", "-u", "postgres", "--", str(env.pg.bin_dir / "pg_checksums"), "--check",
                           "-D", str(target)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Bad checksums:  0" in proc.stdout


def test_tablespace_cluster_restores_to_a_point_in_time_and_latest(tsenv: PgEnv):
    env = tsenv
    writer = _Writer(env)
    writer.start()
    try:
        out = json.loads(env.drkit("backup", "main", "--json").stdout)
        time.sleep(1.5)
    finally:
        writer.stop_flag.set()
        writer.join()
    md = out["metadata"]
    [space] = md["tablespaces"]
    assert md["method"] == "local" and space["name"] == "fast" and space["location"] == str(env.location)
    assert writer.marks, "the writer committed nothing during the backup"
    env.switch_and_wait_archived()
    with env.conn() as c:
        c.execute("CHECKPOINT")
    source_dump = _dumpall(env, "-h", str(env.pg.socket_dir), "-p", str(env.pg.port))
    with env.conn() as c:
        all_ids = [r[0] for r in c.execute("SELECT id FROM docs ORDER BY id")]
        bodies = c.execute("SELECT md5(string_agg(body, '' ORDER BY id)) FROM docs").fetchone()[0]
    source_files = _tree(env.location)

    # A point in time, into a mapped directory.
    after = [(i, t) for i, t in writer.marks if t > datetime.fromisoformat(md["stop_time"])]
    assert len(after) >= 5, "too few commits after the backup"
    mid_id, mid_t = after[len(after) // 2]
    target, place = env.root / "pitr", env.root / "elsewhere" / "fast"
    res = json.loads(env.drkit("restore", "main", "--point-in-time", mid_t.isoformat(), "--target-dir", str(target),
                               "--tablespace-map", f"fast={place}", "--start", "--json").stdout)
    try:
        assert os.readlink(target / "pg_tblspc" / str(space["oid"])) == str(place)
        assert res["tablespaces"] == {"fast": str(place)}
        with env.restored_conn(target, res["port"]) as c:
            got = [r[0] for r in c.execute("SELECT id FROM docs ORDER BY id")]
            assert c.execute("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fast'"
                             ).fetchone()[0] == str(place)
        assert got == [i for i in all_ids if i < 1000 or i <= mid_id]
        _amcheck(env, str(target), res["port"])
    finally:
        env.stop_datadir(target)

    # The latest point, into the default place beside the target.
    target = env.root / "latest"
    res = json.loads(env.drkit("restore", "main", "--target-dir", str(target), "--start", "--json").stdout)
    default = env.root / "latest-tablespaces" / "fast"
    try:
        assert os.readlink(target / "pg_tblspc" / str(space["oid"])) == str(default)
        assert any(default.glob("PG_*/*"))
        with env.restored_conn(target, res["port"]) as c:
            assert [r[0] for r in c.execute("SELECT id FROM docs ORDER BY id")] == all_ids
            assert c.execute("SELECT md5(string_agg(body, '' ORDER BY id)) FROM docs").fetchone()[0] == bodies
            assert c.execute("SELECT length(lo_get(4242))").fetchone()[0] == len("large object ") * 20000
        assert _dumpall(env, "-h", str(target), "-p", str(res["port"])) == source_dump
        _amcheck(env, str(target), res["port"])
    finally:
        env.stop_datadir(target)
    _checksums(env, target)
    # Nothing a restore did reached the source's own tablespace directory.
    assert set(_tree(env.location)) == set(source_files)
    assert env.drkit("verify", "--json", check=False).returncode == 0


def test_tablespace_map_that_cannot_be_honoured_is_refused_and_nothing_written(tsenv: PgEnv):
    env = tsenv
    if not _backup_ids(env):
        env.drkit("backup", "main")
    cases = [
        (f"fast={env.location}", "never restores onto the source"),
        (f"fast={env.location}/sub", "overlaps the source"),
        ("slow=/var/tmp/x", "has no tablespace 'slow'"),
        ("fast", "expected NAME=DIR"),
        ("fast=relative/dir", "absolute path"),
    ]
    for i, (item, message) in enumerate(cases):
        target = env.root / f"refused-{i}"
        proc = env.drkit("restore", "main", "--target-dir", str(target), "--tablespace-map", item, check=False)
        assert proc.returncode == 2, (item, proc.returncode, proc.stderr)
        assert message in proc.stderr, (item, proc.stderr)
        assert not target.exists() or not any(target.iterdir())
    # A place that holds something is refused, and what it holds is left alone.
    busy = env.root / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    target = env.root / "refused-busy"
    proc = env.drkit("restore", "main", "--target-dir", str(target), "--tablespace-map", f"fast={busy}", check=False)
    assert proc.returncode != 0 and "is not an empty directory" in proc.stderr
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not any(target.iterdir())


def test_remote_backup_of_a_tablespace_cluster_is_refused_clearly(tsenv: PgEnv):
    env = tsenv
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["sources"]["remote"] = {"type": "postgres", "dsn": env.pg.dsn}
    path = env.root / "remote.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = _backup_ids(env)
    proc = env.drkit("--config", str(path), "backup", "remote", check=False)
    assert proc.returncode == 10, (proc.returncode, proc.stderr)  # SourceError
    assert "node-local only" in proc.stderr and "set data_dir" in proc.stderr
    assert _backup_ids(env) == before
    assert not any(e["source"] == "remote" and e.get("backups")
                   for e in json.loads(env.drkit("--config", str(path), "list", "--json").stdout))
