"""Damage is named and contained, never silent (real PostgreSQL, local repository).

A hole in the WAL chain, a corrupt manifest, a corrupt old WAL record and a missing pack: each
restore either gives exactly what was committed by its point, or refuses naming the damage
before it touches the target.  Every restore that does not need the damaged object still works.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from pgenv import PgEnv, make_pg_env

from drkit.config import load_config
from drkit.ops import open_repository


@pytest.fixture
def pgenv():
    env = make_pg_env("damage")
    # Holes are gaps at once here (the default grace of 10 min calls a fresh hole "in flight").
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["repository"]["gap_grace"] = 0
    env.config_path.write_text(yaml.safe_dump(cfg))
    yield env
    env.close()


def _commit(env: PgEnv, first: int, count: int) -> list[tuple[int, object]]:
    marks = []
    with env.conn() as c:
        for i in range(first, first + count):
            c.execute("INSERT INTO events (id) VALUES (%s)", (i,))
            marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
    return marks


def _restore_ids(env: PgEnv, target: Path, *args: str) -> list[int]:
    res = json.loads(env.drkit("restore", "main", *args, "--target-dir", str(target), "--start", "--json").stdout)
    try:
        with env.restored_conn(target, res["port"]) as c:
            return [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]
    finally:
        env.stop_datadir(target)


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


def _listing(env: PgEnv) -> dict:
    return json.loads(env.drkit("list", "main", "--json").stdout)[0]


def test_a_hole_in_the_wal_chain_is_named_and_a_latest_restore_refuses(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY)")
    pgenv.drkit("backup", "main")
    segs, marks = [], []
    for k in range(3):
        marks += _commit(pgenv, 10 * k + 1, 3)
        segs.append(pgenv.switch_and_wait_archived())
    repo = pgenv.root / "repo"
    (repo / "logs" / "main" / segs[1]).unlink()  # the middle one of three

    verify = pgenv.drkit("verify", "--json", check=False)
    assert verify.returncode == 5
    report = json.loads(verify.stdout)
    chain = [p for p in report["problems"] if p["kind"] == "chain"]
    assert chain and segs[1] in chain[0]["error"] and "unreachable" in chain[0]["error"]

    entry = _listing(pgenv)
    [gap] = entry["gaps"]
    assert gap["missing"] == segs[1] and gap["state"] == "gap"
    assert gap["unreachable_logs"]["first"] == segs[2]
    newest = gap["newest_reachable"]
    assert entry["window"]["end"] == newest
    text = pgenv.drkit("list", "main").stdout
    assert "GAP" in text and segs[1] in text

    target = pgenv.root / "latest"
    proc = pgenv.drkit("restore", "main", "--target-dir", str(target), "--start", "--wait-in-flight", "0",
                       check=False)
    assert proc.returncode == 9, proc.stderr
    assert segs[1] in proc.stderr and f"--point-in-time {newest}" in proc.stderr
    assert not target.exists()

    # The newest reachable point, restored explicitly: every row committed before the hole (the
    # rows 11-13 were written into the lost segment itself).
    ids = _restore_ids(pgenv, pgenv.root / "explicit", "--point-in-time", newest)
    assert ids == [i for i, _ in marks[:3]]
    # A point inside the first window keeps working.
    assert _restore_ids(pgenv, pgenv.root / "inside", "--point-in-time", marks[1][1].isoformat()) == [1, 2]


def test_damaged_manifest_and_old_wal_record_block_only_what_needs_them(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY)")
    old_seg = pgenv.switch_and_wait_archived()  # archived before every backup
    b1 = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    _commit(pgenv, 1, 3)
    b2 = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    pgenv.switch_and_wait_archived()
    repo = pgenv.root / "repo"
    _flip(repo / "manifests" / "main" / b2["id"])
    _flip(repo / "logs" / "main" / old_seg)

    entry = _listing(pgenv)  # answers, marking both
    damaged = {d["object"]: d for d in entry["damaged"]}
    assert set(damaged) == {f"manifests/main/{b2['id']}", f"logs/main/{old_seg}"}
    assert [b["id"] for b in entry["backups"]] == [b1["id"]]
    assert "DAMAGED" in pgenv.drkit("list", "main").stdout

    assert _restore_ids(pgenv, pgenv.root / "b1", "--backup", b1["id"]) == []
    # Routing around the damaged newer backup: the older base plus WAL reaches every row.
    assert _restore_ids(pgenv, pgenv.root / "latest", "--backup", b1["id"],
                        "--point-in-time", entry["window"]["end"]) == [1, 2, 3]
    proc = pgenv.drkit("restore", "main", "--backup", b2["id"], "--target-dir", str(pgenv.root / "b2"), check=False)
    assert proc.returncode == 5 and f"manifests/main/{b2['id']}" in proc.stderr
    assert not (pgenv.root / "b2").exists()

    report = json.loads(pgenv.drkit("verify", "--json", check=False).stdout)
    by_object = {p["object"]: p for p in report["problems"]}
    assert by_object[f"manifests/main/{b2['id']}"]["affects"]
    assert "no restore point needs" in by_object[f"logs/main/{old_seg}"]["error"]


def test_a_missing_wal_pack_is_found_before_the_target_is_touched(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY)")
    pgenv.drkit("backup", "main")
    _commit(pgenv, 1, 3)
    seg = pgenv.switch_and_wait_archived()
    repo = open_repository(load_config(pgenv.config_path))
    rec = repo.get_log("main", seg)
    pack = rec.stream.chunks[0][1]
    victim = pgenv.root / "repo" / "data" / pack[:2] / pack
    victim.unlink()
    target = pgenv.root / "r"
    target.mkdir()
    (target / "keep-me").write_text("the operator's file")
    proc = pgenv.drkit("restore", "main", "--target-dir", str(target), "--start", check=False)
    assert proc.returncode == 5, proc.stderr
    assert pack in proc.stderr and seg in proc.stderr
    assert [p.name for p in target.iterdir()] == ["keep-me"]  # the target as it was


def test_an_idle_stretch_between_backups_is_no_gap(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY)")
    pgenv.drkit("backup", "main")
    _commit(pgenv, 1, 1)
    time.sleep(8)
    idle = pgenv.server_now()
    time.sleep(1)
    pgenv.drkit("backup", "main")
    pgenv.switch_and_wait_archived()
    entry = _listing(pgenv)
    assert len(entry["windows"]) == 1, entry["windows"]
    assert entry["gaps"] == []
    assert _restore_ids(pgenv, pgenv.root / "idle", "--point-in-time", idle.isoformat()) == [1]
