"""Node-local full backups (``data_dir`` set): pg_backup_start/stop + the data files read directly,
against a real server, restored to a point in time and compared with what was committed."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from pgenv import PgEnv, make_pg_env


@pytest.fixture
def pgenv():
    env = make_pg_env("local")
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["sources"]["main"]["data_dir"] = str(env.pg.data_dir)
    env.config_path.write_text(yaml.safe_dump(cfg))
    yield env
    env.close()


class _Writer(threading.Thread):
    """Commits rows (and updates, which rewrite pages) while the backup copies the files."""

    def __init__(self, env: PgEnv, first: int) -> None:
        super().__init__(daemon=True)
        self.env, self.next_id = env, first
        self.stop_flag = threading.Event()
        self.marks: list[tuple[int, object]] = []

    def run(self) -> None:
        with self.env.conn() as c:
            while not self.stop_flag.is_set():
                i = self.next_id
                c.execute("INSERT INTO events (id, payload) VALUES (%s, %s)", (i, f"event {i}"))
                c.execute("UPDATE filler SET h = md5(h) WHERE id %% 500 = %s", (i % 500,))
                self.marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
                self.next_id += 1
                time.sleep(0.01)


def _rows(env: PgEnv, target, port) -> tuple[list[int], int, int]:
    with env.restored_conn(target, port) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        ids = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]
        filler = c.execute("SELECT count(*) FROM filler").fetchone()[0]
        unlogged = c.execute("SELECT count(*) FROM scratch").fetchone()[0]
        assert c.execute("SELECT count(*) FROM pg_stat_user_tables").fetchone()[0] >= 3
    return ids, filler, unlogged


def _restored_rows(pgenv: PgEnv, tag: str, *how: str) -> tuple[list[int], int, int]:
    """Restore ``how`` (--point-in-time T | --backup ID) into a new directory, start it, read its rows."""
    target = pgenv.root / tag
    res = json.loads(pgenv.drkit("restore", "main", *how, "--target-dir", str(target), "--start",
                                 "--json").stdout)
    try:
        return _rows(pgenv, target, res["port"])
    finally:
        pgenv.stop_datadir(target)


def test_node_local_backup_under_writes_restores_to_a_point_in_time(pgenv: PgEnv):
    with pgenv.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 300000) g")
        c.execute("CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 1000) g")
        c.execute("INSERT INTO events SELECT g, 'before' FROM generate_series(1, 20) g")
    writer = _Writer(pgenv, 1000)
    writer.start()
    try:
        out = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
        time.sleep(0.3)
    finally:
        writer.stop_flag.set()
        writer.join()
    md = out["metadata"]
    assert md["method"] == "local" and md["wal_included"] and md["start_wal"] <= md["stop_wal"]
    assert writer.marks, "the writer committed nothing during the backup"
    pgenv.switch_and_wait_archived()

    # PITR to the last commit, and to the end of the backup alone.
    last_id, last_t = writer.marks[-1]
    ids, filler, unlogged = _restored_rows(pgenv, "pitr", "--point-in-time", last_t.isoformat())
    assert ids == list(range(1, 21)) + [i for i, _ in writer.marks]
    assert filler == 300000 and unlogged == 0  # unlogged data is not backed up (its init fork is)

    ids, filler, _ = _restored_rows(pgenv, "end", "--backup", out["id"])
    assert ids[:20] == list(range(1, 21)) and filler == 300000
    assert set(ids[20:]) <= {i for i, _ in writer.marks} and ids == sorted(ids)
    assert pgenv.drkit("verify", "--json", check=False).returncode == 0


def test_node_local_stream_matches_pg_basebackup_layout_and_dedups(pgenv: PgEnv):
    from drkit.config import load_config
    from drkit.dumpers.postgres.untar import extract
    from drkit.ops import open_repository
    from drkit.repository.reader import iter_stream

    with pgenv.conn() as c:
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 300000) g")
        c.execute("ALTER TABLE filler SET (autovacuum_enabled = false)")
        c.execute("VACUUM (FREEZE, ANALYZE) filler")
        c.execute("CHECKPOINT")
    first = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    second = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    assert second["stored_bytes"] < 0.2 * first["stored_bytes"], (first["stored_bytes"], second["stored_bytes"])

    repo = open_repository(load_config(pgenv.config_path))
    manifest = repo.get_manifest(first["id"], "main")
    out = pgenv.root / "tar-out"
    out.mkdir()
    extract(iter_stream(repo, manifest.stream("base.tar")), out)
    md = first["metadata"]
    label = (out / "backup_label").read_text()
    assert f"START WAL LOCATION: {md['start_lsn']}" in label and "BACKUP FROM: primary" in label
    assert (out / "pg_wal" / md["start_wal"]).stat().st_size == md["segment_size"]
    assert (out / "pg_wal" / "archive_status" / f"{md['start_wal']}.done").exists()
    assert not (out / "postmaster.pid").exists() and (out / "global" / "pg_control").exists()
    assert not any((out / "pg_stat_tmp").iterdir()) and (out / "PG_VERSION").read_text() == "15\n"


def test_node_local_refuses_a_data_dir_that_is_not_the_servers(pgenv: PgEnv):
    other = pgenv.root / "not-pgdata"
    (other / "global").mkdir(parents=True)
    (other / "global" / "pg_control").write_bytes(b"\x01" * 8192)
    cfg = yaml.safe_load(pgenv.config_path.read_text())
    cfg["sources"]["main"]["data_dir"] = str(other)
    pgenv.config_path.write_text(yaml.safe_dump(cfg))
    proc = pgenv.drkit("backup", "main", check=False)
    assert proc.returncode != 0 and "is not the data directory" in proc.stderr
    assert json.loads(pgenv.drkit("list", "main", "--json").stdout)[0].get("backups", []) == []


def test_node_local_chunks_follow_file_offsets_restore_identical_and_dedup_changes(pgenv: PgEnv):
    """Relation files are cut at 1 MiB file offsets: the restored files are byte for byte the
    source's, and after a few rows change a second full stores little more than those pages and
    the new WAL."""
    from drkit.config import load_config
    from drkit.dumpers.postgres.localbackup import FILE_CHUNK
    from drkit.ops import open_repository

    with pgenv.conn() as c:
        c.execute("CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS h "
                  "FROM generate_series(1, 300000) g")
        c.execute("ALTER TABLE filler SET (autovacuum_enabled = false)")
        c.execute("VACUUM (FREEZE, ANALYZE) filler")
        c.execute("CHECKPOINT")
        rel = c.execute("SELECT pg_relation_filepath('filler')").fetchone()[0]
    source_file = pgenv.pg.data_dir / rel
    size = source_file.stat().st_size
    assert size > 8 * FILE_CHUNK
    first = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    assert first["metadata"]["method"] == "local"

    # Restored (laid down, not started): the relation is the source's, byte for byte.
    target = pgenv.root / "laid-down"
    pgenv.drkit("restore", "main", "--backup", first["id"], "--target-dir", str(target))
    assert (target / rel).read_bytes() == source_file.read_bytes()

    # Chunk boundaries: at the start of the relation's contents and every FILE_CHUNK after it.
    repo = open_repository(load_config(pgenv.config_path))
    ref = repo.get_manifest(first["id"], "main").stream("base.tar")
    ends, pos = set(), 0
    for ch in ref.chunks:  # [id, pack, offset, length, raw length]
        pos += int(ch[4])
        ends.add(pos)
    assert pos == ref.size
    start = _tar_data_offset(repo, ref, rel)
    assert {start + k * FILE_CHUNK for k in range(size // FILE_CHUNK + 1)} <= ends

    # A few rows change: the second full stores a small fraction of the first.
    with pgenv.conn() as c:
        c.execute("UPDATE filler SET h = md5(h) WHERE id <= 300")
        c.execute("CHECKPOINT")
    second = json.loads(pgenv.drkit("backup", "main", "--json").stdout)
    md = second["metadata"]
    assert md["chunks_reused"] > md["chunks_new"], md
    assert second["stored_bytes"] < 0.35 * first["stored_bytes"], (first["stored_bytes"], second["stored_bytes"])


def _tar_data_offset(repo, ref, name: str) -> int:
    from drkit.repository.reader import iter_stream

    buf, base = bytearray(), 0
    for piece in iter_stream(repo, ref):
        buf += piece
        while len(buf) >= 512:
            hdr = bytes(buf[:512])
            if hdr == bytes(512):
                raise AssertionError(f"{name} not in the stream")
            size = int(hdr[124:136].rstrip(b"\0 ") or b"0", 8)
            if hdr[:100].rstrip(b"\0").decode() == name:
                return base + 512
            skip = 512 + (size + 511) // 512 * 512
            if len(buf) < skip:
                break
            del buf[:skip]
            base += skip
    raise AssertionError(f"{name} not in the stream")
