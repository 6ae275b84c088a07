"""One PostgreSQL cluster archiving into two repositories (archive_command ``A && B``).

Push-ahead markers must answer only for the destination (repository id + source) that wrote
them: every segment must reach both repositories, and a latest-state restore from each must
hold exactly the committed rows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pgenv import DRKIT, PgEnv, make_pg_env


@pytest.fixture
def two_dest():
    env = make_pg_env("twodest")
    try:
        cfg_b = _second_repository(env)
    except BaseException:
        env.close()
        raise
    yield env, cfg_b
    env.close()


def _second_repository(env: PgEnv) -> Path:
    """A second config, key and repository for the same cluster and source name."""
    key = env.root / "b.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o640)
    shutil.chown(key, "root", "postgres")
    repo = env.root / "repo-b"
    repo.mkdir()
    shutil.chown(repo, "postgres", "postgres")
    config = yaml.safe_load(env.config_path.read_text())
    config["repository"] = {"url": f"file://{repo}"}
    config["encryption"] = {"key_file": str(key)}
    cfg = env.root / "b.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cfg.chmod(0o644)
    _drkit(env, cfg, "init")
    return cfg


def _drkit(env: PgEnv, cfg: Path, *args: str) -> str:
    import subprocess

    proc = subprocess.run([DRKIT, "--config", str(cfg), *args], capture_output=True, text=True,
                          env={**os.environ, **env.env}, timeout=600, check=False)
    assert proc.returncode == 0, f"drkit --config {cfg.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def _table_state(conn) -> tuple[int, str]:  # noqa: ANN001
    return conn.execute(
        "SELECT count(*), md5(coalesce(string_agg(id || ':' || payload, ',' ORDER BY id), '')) FROM events"
    ).fetchone()


def _wait_archived(env: PgEnv, last: str, failed_before: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with env.conn() as c:
        while time.monotonic() < deadline:
            archived, failed = c.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
            assert failed == failed_before, f"archive_command failed:\n{env.pg.log_path.read_text(errors='replace')[-3000:]}"
            if archived and archived >= last:
                return
            time.sleep(0.2)
    raise AssertionError(f"{last} not archived within {timeout}s")


def _restore_latest(env: PgEnv, cfg: Path, target: Path) -> tuple[int, str]:
    res = json.loads(_drkit(env, cfg, "restore", "main", "--target-dir", str(target), "--start", "--json"))
    try:
        with env.restored_conn(target, res["port"]) as c:
            assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            return _table_state(c)
    finally:
        env.stop_datadir(target)


def test_both_destinations_receive_every_pushed_ahead_segment(two_dest):
    env, cfg_b = two_dest
    cfg_a = env.config_path
    both = (f"{DRKIT} --config {cfg_a} pg wal-push --source main %p && "
            f"{DRKIT} --config {cfg_b} pg wal-push --source main %p")
    env.pg.set_settings({"archive_command": both})
    with env.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
    _drkit(env, cfg_a, "backup", "main")
    _drkit(env, cfg_b, "backup", "main")
    env.switch_and_wait_archived()

    with env.conn() as c:
        failed_before = c.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0]
        # Switch faster than two wal-push calls per segment can keep up: .ready files queue up.
        last = ""
        for batch in range(24):
            c.execute("INSERT INTO events SELECT g, md5(g::text) || repeat('x', 400) "
                      "FROM generate_series(%s::int, %s::int) g", (batch * 3000 + 1, batch * 3000 + 3000))
            last = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        committed = _table_state(c)
    _wait_archived(env, last, failed_before)

    log = env.pg.log_path.read_text(errors="replace")
    fast = Counter(line.split(":")[0] for line in log.splitlines()
                   if line.endswith(": already archived (pushed ahead)"))
    # Markers were used, by each destination for its own calls (a file answered twice: once
    # for A by A's marker, once for B by B's), and never more than once per destination.
    assert sum(fast.values()) >= 4, f"push-ahead never answered a call: {fast}"
    assert any(n == 2 for n in fast.values()), f"no file was answered for both destinations: {fast}"
    assert max(fast.values()) <= 2, fast
    markers = env.pg.data_dir / "drkit-archived"
    assert [p for p in markers.rglob("*") if p.is_file()] == [], "push-ahead markers left behind"
    assert committed[0] == 24 * 3000

    for tag, cfg in (("a", cfg_a), ("b", cfg_b)):
        restored = _restore_latest(env, cfg, env.root / f"restore-{tag}")
        assert restored == committed, f"repository {tag}: restored {restored[0]} rows, committed {committed[0]}"


# -- the marker logic on its own (no server: a data directory layout and in-memory repositories) --

def _datadir(tmp_path: Path, names: list[str]) -> Path:
    wal = tmp_path / "data" / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    for i, n in enumerate(names):
        (wal / n).write_bytes(os.urandom(64) + bytes([i]))
        (wal / "archive_status" / f"{n}.ready").touch()
    return wal


SEGS = [f"0000000100000000000000{i:02X}" for i in range(1, 6)]


def _repo(name: str):  # noqa: ANN202
    from drkit.config import Secret
    from drkit.repository import Repository
    from drkit.repository.keys import SecretWrapper
    from drkit.storage.memory import MemoryStorage

    return Repository.init(MemoryStorage(name), SecretWrapper(Secret("k" * 40), "test key", "key_env"))


def test_marker_answers_only_its_own_destination(tmp_path):
    from drkit.dumpers.postgres.wal import Destination, _file_digest, has_marker, pushed_ahead, write_marker

    seg = _datadir(tmp_path, SEGS[:1]) / SEGS[0]
    a = Destination("a" * 32, "main", "file:///repo-a")
    others = [Destination("b" * 32, "main", "file:///repo-b"),   # another repository
              Destination("a" * 32, "other", "file:///repo-a"),  # another source of the same one
              Destination("a" * 32, "main", "file:///copy-of-a")]  # a copy keeps the id
    write_marker(seg, a, _file_digest(seg))
    assert has_marker(seg, "main") and not has_marker(seg, "other")
    for other in others:
        assert pushed_ahead(seg, other) is False
    assert pushed_ahead(seg, a) is True  # A's own call: answered, and the marker is consumed
    assert not has_marker(seg, "main")
    assert pushed_ahead(seg, a) is False


def test_marker_with_wrong_digest_or_destination_is_ignored_and_removed(tmp_path):
    from drkit.dumpers.postgres.wal import Destination, _file_digest, _marker_dir, pushed_ahead, write_marker

    seg = _datadir(tmp_path, SEGS[:1]) / SEGS[0]
    a = Destination("a" * 32, "main", "file:///repo-a")
    b = Destination("b" * 32, "main", "file:///repo-b")
    write_marker(seg, a, "0" * 64)
    assert pushed_ahead(seg, a) is False
    assert not (_marker_dir(seg, a) / seg.name).exists()
    # Unreadable content (e.g. a marker cut short by a crash): ignored and removed.
    write_marker(seg, a, _file_digest(seg))
    (_marker_dir(seg, a) / seg.name).write_text('{"blake3": ')
    assert pushed_ahead(seg, a) is False
    assert not (_marker_dir(seg, a) / seg.name).exists()
    # A marker in A's place whose content names another destination does not answer for A.
    write_marker(seg, a, _file_digest(seg))
    (_marker_dir(seg, a) / seg.name).write_text(b.record(_file_digest(seg)))
    assert pushed_ahead(seg, a) is False
    # Changed file content after the marker was written.
    write_marker(seg, a, _file_digest(seg))
    seg.write_bytes(b"changed")
    assert pushed_ahead(seg, a) is False


def test_source_name_cannot_escape_the_marker_directory(tmp_path):
    from drkit.dumpers.postgres.wal import Destination, _marker_dir

    seg = _datadir(tmp_path, SEGS[:1]) / SEGS[0]
    root = _marker_dir(seg)
    for source in ("..", ".", "a b", "é"):
        d = _marker_dir(seg, Destination("a" * 32, source, "file:///r"))
        assert d.parent.parent == root and d.name not in (".", "..") and d.resolve().parent.parent == root.resolve()


def test_stale_markers_are_swept(tmp_path):
    from drkit.dumpers.postgres.wal import ARCHIVED_DIR, Destination, _marker_dir, sweep_markers, write_marker

    wal = _datadir(tmp_path, SEGS[:3])
    a = Destination("a" * 32, "main", "file:///repo-a")
    gone_dest = Destination("c" * 32, "main", "file:///removed-from-archive-command")
    root = tmp_path / "data" / ARCHIVED_DIR
    write_marker(wal / SEGS[0], a, "x")          # fresh, file present: kept
    write_marker(wal / SEGS[1], gone_dest, "x")  # older than a day: removed
    old = time.time() - 2 * 86400
    os.utime(_marker_dir(wal / SEGS[1], gone_dest) / SEGS[1], (old, old))
    write_marker(wal / SEGS[2], a, "x")          # its WAL file is gone: removed
    (wal / SEGS[2]).unlink()
    (root / SEGS[0]).write_text("x")             # old layout (named no destination): removed
    assert sweep_markers(wal / SEGS[0], keep=a) == 3
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == [f"{'a' * 32}/main/{SEGS[0]}"]


def test_push_ahead_writes_markers_per_destination(tmp_path, monkeypatch):
    from drkit.dumpers.postgres import wal as walmod

    wal = _datadir(tmp_path, SEGS)
    pushed: list[tuple[str, str]] = []
    monkeypatch.setattr(walmod, "wal_push", lambda repo, source, opts, p: pushed.append((repo.id, p.name)))
    repo_a, repo_b = _repo("a"), _repo("b")
    first = wal / SEGS[0]
    assert walmod.push_ahead(repo_a, "main", None, first) == SEGS[1:]
    # B's call for the same segment must push the same files to B, not skip them for A's markers.
    assert walmod.push_ahead(repo_b, "main", None, first) == SEGS[1:]
    assert sorted(pushed) == sorted([(repo_a.id, n) for n in SEGS[1:]] + [(repo_b.id, n) for n in SEGS[1:]])
    dest_a = walmod.peek_destination(repo_a.storage, "main")
    assert dest_a == walmod.destination_of(repo_a, "main")
    dest_b = walmod.peek_destination(repo_b.storage, "main")
    for n in SEGS[1:]:  # each destination's call is answered by its own marker, once
        assert walmod.pushed_ahead(wal / n, dest_a) is True
        assert walmod.has_marker(wal / n, "main")
        assert walmod.pushed_ahead(wal / n, dest_b) is True
        assert not walmod.has_marker(wal / n, "main")
    assert walmod.push_ahead(repo_a, "main", None, first) == SEGS[1:]  # no marker left: pushes again
