"""PostgreSQL end to end against real servers: full backup, WAL archiving, point-in-time restore.

Every restore is compared with what was committed at or before the restore point.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from pgenv import PgEnv, make_pg_env


@pytest.fixture
def pgenv():
    env = make_pg_env("pitr")
    yield env
    env.close()


def _commit_rows(env: PgEnv, first: int, count: int) -> list[tuple[int, object]]:
    """Insert rows one transaction each; after each commit record the server time."""
    marks = []
    with env.conn() as c:
        for i in range(first, first + count):
            c.execute("INSERT INTO events (id, payload) VALUES (%s, %s)", (i, f"event {i}"))
            marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
            time.sleep(0.05)
    return marks


def _restored_ids(env: PgEnv, target_dir, port: int) -> list[int]:
    with env.restored_conn(target_dir, port) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        return [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]


def _stop_restored(env: PgEnv, target_dir, port: int) -> None:
    env.stop_datadir(target_dir)


def test_point_in_time_restores_exactly_the_committed_rows(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text, at timestamptz DEFAULT clock_timestamp())")
    _commit_rows(pgenv, 1, 20)
    out = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    assert out["type"] == "full" and out["metadata"]["stop_lsn"]
    marks = _commit_rows(pgenv, 100, 30)
    pgenv.switch_and_wait_archived()

    listing = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
    window = listing["window"]
    assert window is not None and window["start"] <= window["end"]

    # Several targets inside the window: after the backup's rows, mid-stream, the last commit.
    picks = [marks[0], marks[len(marks) // 2], marks[-1]]
    for idx, (row_id, t) in enumerate(picks):
        target = pgenv.root / f"restore-{idx}"
        res = json.loads(pgenv.drkit(
            "restore", "main", "--point-in-time", t.isoformat(), "--target-dir", str(target), "--start", "--json"
        ).stdout)
        port = res["port"]
        try:
            ids = _restored_ids(pgenv, target, port)
        finally:
            _stop_restored(pgenv, target, port)
        expected = list(range(1, 21)) + [i for i, _ in marks if i <= row_id]
        assert ids == expected, f"restore to {t} (after row {row_id}) got {ids[-5:]}"
        assert res["phases_seconds"]["download"] >= 0


def test_point_outside_window_is_refused_before_touching_target(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    before = pgenv.server_now()
    pgenv.drkit("backup", "main")
    _commit_rows(pgenv, 1, 3)
    pgenv.switch_and_wait_archived()
    for when in (before - timedelta(hours=1), pgenv.server_now() + timedelta(hours=1)):
        target = pgenv.root / "never"
        proc = pgenv.drkit("restore", "main", "--point-in-time", when.isoformat(), "--target-dir", str(target), check=False)
        assert proc.returncode == 8, proc.stderr
        assert "outside the recoverable window" in proc.stderr
        assert not target.exists()


def test_missing_wal_segment_is_named(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    pgenv.drkit("backup", "main")
    _commit_rows(pgenv, 1, 2)
    gap = pgenv.switch_and_wait_archived()
    marks = _commit_rows(pgenv, 10, 2)
    pgenv.switch_and_wait_archived()
    # Lose one archived segment in the middle of the chain.
    repo = pgenv.root / "repo"
    victim = repo / "logs" / "main" / gap
    assert victim.exists()
    victim.unlink()
    proc = pgenv.drkit("restore", "main", "--point-in-time", marks[-1][1].isoformat(),
                       "--target-dir", str(pgenv.root / "r"), check=False)
    assert proc.returncode == 9, proc.stderr  # chain broken: the WAL after the hole is archived
    assert gap in proc.stderr and ("is missing" in proc.stderr or "in flight" in proc.stderr)  # default gap_grace
    assert not (pgenv.root / "r").exists()


def test_second_full_of_unchanged_database_adds_little(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1000000) g")
        # Unchanged means unchanged on disk too: without this, autovacuum or the first reader sets
        # hint bits / visibility-map bits between the two backups and rewrites whole pages.
        c.execute("ALTER TABLE filler SET (autovacuum_enabled = false)")
        c.execute("VACUUM (FREEZE, ANALYZE) filler")
        c.execute("CHECKPOINT")
    first = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    second = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    assert first["stored_bytes"] > 20_000_000
    assert second["stored_bytes"] < 0.05 * first["stored_bytes"], (first["stored_bytes"], second["stored_bytes"])


def test_wal_push_is_idempotent_and_refuses_different_content(pgenv: PgEnv, tmp_path):
    seg = pgenv.switch_and_wait_archived()
    src = pgenv.pg.data_dir / "pg_wal" / seg
    copy = pgenv.root / seg
    import shutil

    if src.exists():
        shutil.copy(src, copy)
    else:  # already recycled: fetch it back from the archive
        pgenv.drkit("pg", "wal-fetch", "--source", "main", seg, str(copy))
    pgenv.drkit("pg", "wal-push", "--source", "main", str(copy))  # identical: ok
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    proc = pgenv.drkit("pg", "wal-push", "--source", "main", str(copy), check=False)
    assert proc.returncode == 12
    assert "different content" in proc.stderr
    # wal-fetch of a name never archived exits 1 (what restore_command must do)
    proc = pgenv.drkit("pg", "wal-fetch", "--source", "main", "0000000100000000000000FE", str(tmp_path / "x"), check=False)
    assert proc.returncode == 1


def test_killed_backup_leaves_nothing_visible_and_next_succeeds(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g")
    for point in ("write_stream.chunk:3", "session.before_index", "session.after_index"):
        proc = pgenv.drkit("backup", "main", check=False, extra_env={"DRKIT_CRASH_AT": point})
        assert proc.returncode == -9, (point, proc.returncode, proc.stderr)
        listing = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
        assert listing["backups"] == [], point
    pgenv.drkit("backup", "main")
    listing = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
    assert len(listing["backups"]) == 1
    verify = json.loads(pgenv.drkit("verify", "--json").stdout)
    assert verify["ok"], verify["problems"]


def test_wrong_key_fails_cleanly(pgenv: PgEnv):
    import yaml

    cfg = yaml.safe_load(pgenv.config_path.read_text())
    other = pgenv.root / "other.key"
    other.write_text("a completely different key of enough length")
    cfg["encryption"]["key_file"] = str(other)
    bad = pgenv.root / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    before = sorted(p.name for p in (pgenv.root / "repo").rglob("*"))
    import subprocess

    from pgenv import DRKIT

    for args in (["list"], ["backup", "main"]):
        proc = subprocess.run([DRKIT, "--config", str(bad), *args], capture_output=True, text=True)
        assert proc.returncode == 4, proc.stderr
        assert "does not unlock" in proc.stderr
        assert "different key" not in proc.stderr  # the secret never appears
    assert sorted(p.name for p in (pgenv.root / "repo").rglob("*")) == before


def test_restore_across_a_timeline_switch(pgenv: PgEnv):
    """Fail over to a restored copy (new timeline, archiving into the same source), write more,
    then restore to a time on the new timeline: drkit must follow the history file."""

    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    _commit_rows(pgenv, 1, 5)
    pgenv.drkit("backup", "main")
    _commit_rows(pgenv, 10, 5)
    pgenv.switch_and_wait_archived()
    pgenv.pg.stop()  # the old primary is gone

    promoted = pgenv.root / "promoted"
    res = json.loads(pgenv.drkit("restore", "main", "--target-dir", str(promoted), "--start",
                                 "--keep-archiving", "--json").stdout)
    port = res["port"]
    marks = []
    try:
        with pgenv.restored_conn(promoted, port) as c:
            assert c.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0] >= 1
            for i in range(100, 106):
                c.execute("INSERT INTO events VALUES (%s, 'after failover')", (i,))
                marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
                time.sleep(0.05)
            c.execute("CHECKPOINT")
            walname = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            assert walname.startswith("00000002")
            deadline = time.monotonic() + 60
            while c.execute("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").fetchone()[0] < walname:
                assert time.monotonic() < deadline, "new timeline's WAL was not archived"
                time.sleep(0.1)
    finally:
        pgenv.stop_datadir(promoted)
    names = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
    assert names["newest_wal"].startswith("00000002")

    row_id, t = marks[2]
    target = pgenv.root / "on-tli2"
    res = json.loads(pgenv.drkit("restore", "main", "--point-in-time", t.isoformat(), "--target-dir", str(target),
                                 "--start", "--json").stdout)
    try:
        ids = _restored_ids(pgenv, target, res["port"])
    finally:
        _stop_restored(pgenv, target, res["port"])
    assert ids == [1, 2, 3, 4, 5, 10, 11, 12, 13, 14] + [i for i, _ in marks if i <= row_id]


def test_corrupt_wal_aborts_recovery_instead_of_promoting_early(pgenv: PgEnv):
    """restore_command must not answer "not archived" for a corrupt segment: PostgreSQL would
    promote a server that silently lacks the later transactions."""
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    pgenv.drkit("backup", "main")
    _commit_rows(pgenv, 1, 3)
    middle = pgenv.switch_and_wait_archived()
    marks = _commit_rows(pgenv, 10, 3)
    pgenv.switch_and_wait_archived()
    # Flip one byte in every pack holding the middle segment (find them through verify).
    pgenv.drkit("verify")
    repo = pgenv.root / "repo"
    import yaml

    from drkit.config import parse_config
    from drkit.ops import open_repository

    cfg = parse_config(yaml.safe_load(pgenv.config_path.read_text()), pgenv.config_path)
    rec = open_repository(cfg).get_log("main", middle)
    for pack in {ref[1] for ref in rec.stream.chunks}:
        path = repo / "data" / pack[:2] / pack
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x40
        path.write_bytes(bytes(data))
    target = pgenv.root / "restored"
    proc = pgenv.drkit("restore", "main", "--point-in-time", marks[-1][1].isoformat(), "--target-dir",
                       str(target), "--start", check=False)
    assert proc.returncode != 0, "a restore that could not read its WAL must not succeed"
    log = (target / "drkit-restore.log").read_text()
    assert "aborting recovery" in log or "authentication failed" in log
    assert "archive recovery complete" not in log
    assert not (target / "postmaster.pid").exists()
    report = pgenv.drkit("verify", "--json", check=False)
    assert report.returncode == 5 and f"log main/{middle}" in report.stdout


def test_restore_is_pinned_to_the_planned_chain(pgenv: PgEnv):
    """WAL archived after the plan was made (the primary still running during an incident) is
    never replayed into a restore to the end of the window."""
    from drkit.sandbox.postgres import start_existing

    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    pgenv.drkit("backup", "main")
    marks = _commit_rows(pgenv, 1, 4)
    pgenv.switch_and_wait_archived()
    target = pgenv.root / "restored"
    pgenv.drkit("restore", "main", "--point-in-time", marks[-1][1].isoformat(), "--target-dir", str(target))
    _commit_rows(pgenv, 50, 4)  # after the plan: must not appear in the restore
    pgenv.switch_and_wait_archived()
    inst = start_existing(target, port=_free_port())
    try:
        inst.wait_recovery_done(timeout=120)
        with inst.connect() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]
    finally:
        inst.stop()
    assert ids == [1, 2, 3, 4]


def _free_port() -> int:
    from drkit.sandbox.ports import free_port

    return free_port()


def test_archive_backlog_is_pushed_ahead_and_restores(pgenv: PgEnv):
    """A backlog of ready WAL files (archiving was down) is archived in parallel batches; every
    file ends up in the repository, no push-ahead marker is left, and a PITR across it works."""
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    pgenv.drkit("backup", "main")
    good = pgenv.pg.set_settings({"archive_command": "false"})
    del good
    names = []
    with pgenv.conn() as c:
        for i in range(6):
            c.execute("INSERT INTO events VALUES (%s, 'backlog')", (i,))
            names.append(c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
        marks = [(99, c.execute("SELECT clock_timestamp()").fetchone()[0])]
    ready = list((pgenv.pg.data_dir / "pg_wal" / "archive_status").glob("*.ready"))
    assert len(ready) >= 6
    from pgenv import DRKIT

    pgenv.pg.set_settings({"archive_command": f"{DRKIT} --config {pgenv.config_path} pg wal-push --source main %p"})
    pgenv.switch_and_wait_archived()
    listing = json.loads(pgenv.drkit("list", "main", "--json").stdout)[0]
    assert listing["wal_files"] >= 8
    leftovers = list((pgenv.pg.data_dir / "drkit-archived").glob("*")) if (pgenv.pg.data_dir / "drkit-archived").exists() else []
    assert leftovers == []
    log = pgenv.pg.log_path.read_text(errors="replace")
    assert "pushed ahead" in log or "archived ahead" in log
    target = pgenv.root / "restored"
    res = json.loads(pgenv.drkit("restore", "main", "--point-in-time", marks[-1][1].isoformat(),
                                 "--target-dir", str(target), "--start", "--json").stdout)
    try:
        ids = _restored_ids(pgenv, target, res["port"])
    finally:
        _stop_restored(pgenv, target, res["port"])
    assert ids == list(range(6))


def test_point_in_time_from_an_older_base_on_request(pgenv: PgEnv):
    """--backup with --point-in-time picks the base (to route around a damaged newer one)."""
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    first = json.loads(pgenv.drkit("backup", "main", "--json").stdout)["id"]
    _commit_rows(pgenv, 1, 3)
    second = json.loads(pgenv.drkit("backup", "main", "--json").stdout)["id"]
    marks = _commit_rows(pgenv, 10, 3)
    pgenv.switch_and_wait_archived()
    t = marks[1][1]
    for base_id in (first, second):
        target = pgenv.root / f"r-{base_id}"
        res = json.loads(pgenv.drkit("restore", "main", "--backup", base_id, "--point-in-time", t.isoformat(),
                                     "--target-dir", str(target), "--start", "--json").stdout)
        assert res["backup"] == base_id
        try:
            assert _restored_ids(pgenv, target, res["port"]) == [1, 2, 3, 10, 11]
        finally:
            _stop_restored(pgenv, target, res["port"])


@pytest.mark.parametrize("point", ["log.before_commit", "log.after_commit"])
def test_wal_push_killed_mid_way_is_retried_without_a_gap(point):
    """SIGKILL inside archive_command: PostgreSQL retries the same file; the re-push stores it (or
    finds it identical) and the chain has no gap."""

    from pgenv import make_pg_env, workdir

    flags = workdir("crashflag")
    import shutil

    shutil.chown(flags, "postgres", "postgres")
    env = make_pg_env("walcrash", server_only_env={"DRKIT_CRASH_AT": point,
                                                   "DRKIT_CRASH_ONCE": str(flags / "crashed")})
    try:
        with env.conn() as c:
            c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
        env.drkit("backup", "main")
        marks = _commit_rows(env, 1, 4)
        env.switch_and_wait_archived(timeout=120)
        assert (flags / "crashed").exists(), "the crash point was never reached"
        target = env.root / "restored"
        res = json.loads(env.drkit("restore", "main", "--point-in-time", marks[-1][1].isoformat(),
                                   "--target-dir", str(target), "--start", "--json").stdout)
        try:
            assert _restored_ids(env, target, res["port"]) == [1, 2, 3, 4]
        finally:
            _stop_restored(env, target, res["port"])
        report = json.loads(env.drkit("verify", "--json").stdout)
        assert report["ok"], report["problems"]
    finally:
        env.close()
        shutil.rmtree(flags, ignore_errors=True)


def test_corrupt_base_backup_is_named_and_leaves_the_target_empty(pgenv: PgEnv):
    """A flipped byte in the base backup's data: restore exits 5 naming the object, and the
    target directory is left empty (never half a data directory)."""
    with pgenv.conn() as c:
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 100000) g")
    backup_id = json.loads(pgenv.drkit("backup", "main", "--json").stdout)["id"]
    packs = sorted((pgenv.root / "repo" / "data").rglob("*"))
    victim = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    target = pgenv.root / "restored"
    target.mkdir()
    proc = pgenv.drkit("restore", "main", "--backup", backup_id, "--target-dir", str(target), check=False)
    assert proc.returncode == 5, proc.stderr
    assert victim.name in proc.stderr
    assert list(target.iterdir()) == []
