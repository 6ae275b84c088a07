"""The WAL push path under SIGKILL: no segment is ever acknowledged before it is committed.

PostgreSQL's archive_command (``drkit pg wal-push``) and the detached pusher it starts are
killed at random points -- by a killer thread at random moments, and at named crash points
(``DRKIT_CRASH_AT``: before/after the log record's commit, mid-upload, before/after the marker)
-- while a burst of WAL segments is archived.  A watcher polls every 10 ms for
acknowledgements: a segment PostgreSQL marks ``.done`` (its archive_command exited 0) and a
push-ahead marker (which makes the next call exit 0 at once).  Each must already be committed
in the repository when it is seen, and in the end every segment is stored with the exact bytes
PostgreSQL acknowledged.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import blake3
import pytest
from pgenv import DRKIT, PgEnv, make_pg_env

from drkit.config import load_config
from drkit.dumpers.postgres.walnames import is_valid_wal_name
from drkit.ops import open_repository


@pytest.fixture(scope="module")
def env():
    e = make_pg_env("pushkill")
    with e.conn() as c:
        c.execute("CREATE TABLE burst (id int, payload text)")
    e.switch_and_wait_archived()
    yield e
    e.close()


def _digest_file(path: Path) -> str | None:
    try:
        return blake3.blake3(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Watcher(threading.Thread):
    """Records every acknowledgement and whether its segment was committed when it was seen."""

    def __init__(self, env: PgEnv, once: Path | None, max_crashes: int) -> None:
        super().__init__(daemon=True)
        self.repo = open_repository(load_config(env.config_path))
        self.wal = env.pg.data_dir / "pg_wal"
        self.markers = env.pg.data_dir / "drkit-archived"
        self.seen_done = self._done()
        self.seen_markers: set[tuple[str, str]] = set()
        self.acked: dict[str, str | None] = {}  # name -> BLAKE3 of the file when acknowledged
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.marker_checks = 0
        self.once, self.max_crashes, self.crashes = once, max_crashes, 0
        self.stop = threading.Event()

    def _done(self) -> set[str]:
        return {n[: -len(".done")] for n in os.listdir(self.wal / "archive_status") if n.endswith(".done")}

    def _committed(self, name: str) -> bool:
        return self.repo.get_log("main", name) is not None

    def run(self) -> None:
        self.rearm_at: float | None = None
        while not self.stop.is_set():
            try:
                self.poll()
            except FileNotFoundError:  # a marker directory removed while listed: poll again
                continue
            except Exception as exc:  # noqa: BLE001 - reported by _check: a dead watcher proves nothing
                self.errors.append(repr(exc))
                return
            time.sleep(0.01)

    def poll(self) -> None:
        for name in sorted(self._done() - self.seen_done):
            if is_valid_wal_name(name):
                digest = _digest_file(self.wal / name)
                if not self._committed(name):
                    self.violations.append(f"{name} is .done but not committed")
                self.acked[name] = digest
            self.seen_done.add(name)
        if self.markers.is_dir():
            for m in self.markers.rglob("*"):
                if m.name.startswith(".") or not is_valid_wal_name(m.name):
                    continue
                try:
                    content = m.read_text()
                except OSError:  # consumed meanwhile
                    continue
                if (m.name, content) in self.seen_markers:
                    continue
                self.seen_markers.add((m.name, content))
                self.marker_checks += 1
                if not self._committed(m.name):
                    self.violations.append(f"marker for {m.name} exists but it is not committed")
        if self.once is not None and self.once.exists() and self.crashes < self.max_crashes:
            if self.rearm_at is None:
                self.crashes += 1
                self.rearm_at = time.monotonic() + 0.3
            elif time.monotonic() >= self.rearm_at:  # re-arm the crash point, after a pause
                self.once.unlink()
                self.rearm_at = None


class Killer(threading.Thread):
    """SIGKILLs the detached pusher at random moments (a kill of PostgreSQL's own call makes the
    archiver exit, and the postmaster restarts it only 10 s later: the crash-point cases cover
    that call)."""

    def __init__(self, env: PgEnv, seed: int) -> None:
        super().__init__(daemon=True)
        self.needle = str(env.config_path).encode()
        self.rng = random.Random(seed)
        self.kills = 0
        self.stop = threading.Event()

    def targets(self) -> list[int]:
        pids = []
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                with open(f"/proc/{e}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if self.needle in cmd and b"wal-push" in cmd and _parent_comm(int(e)) not in ("postgres", "sh"):
                pids.append(int(e))
        return pids

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.03, 0.35)):
            pids = self.targets()
            if pids:
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


def _parent_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{int(stat[stat.rfind(b')') + 2:].split()[1])}/comm") as fh:
            return fh.read().strip()
    except (OSError, ValueError, IndexError):
        return ""


def _burst(env: PgEnv, segments: int, pause: float = 0.05) -> list[str]:
    names = []
    with env.conn() as c:
        for _ in range(segments):
            c.execute("INSERT INTO burst SELECT g, md5(g::text) || repeat('x', 400) FROM generate_series(1, 2500) g")
            names.append(c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
            time.sleep(pause)
    return names


def _wait_archived(env: PgEnv, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with env.conn() as c:
        while time.monotonic() < deadline:
            if (c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") >= name:
                return
            time.sleep(0.1)


def _normal(env: PgEnv) -> str:
    return f"{DRKIT} --config {env.config_path} pg wal-push --source main %p"


def _check(env: PgEnv, watcher: Watcher, names: list[str]) -> None:
    assert watcher.errors == [], "the watcher failed"
    assert watcher.violations == []
    missing = [n for n in names if n not in watcher.acked]
    assert missing == [], f"segments never seen acknowledged: {missing}"
    repo = watcher.repo
    for name in names:
        rec = repo.get_log("main", name)
        assert rec is not None, f"{name} acknowledged but not in the repository"
        with repo.open_stream(rec.stream) as fh:
            stored = blake3.blake3(fh.read()).hexdigest()
        if watcher.acked[name] is not None:
            assert stored == watcher.acked[name], f"{name}: stored bytes differ from the acknowledged file"
        assert rec.metadata.get("commit_times_ok") is True, f"{name}: {rec.metadata}"


@pytest.mark.parametrize("seed", [1, 2])
def test_random_sigkills_never_acknowledge_an_uncommitted_segment(env: PgEnv, seed: int):
    watcher, killer = Watcher(env, None, 0), Killer(env, seed)
    watcher.start()
    killer.start()
    try:
        names = _burst(env, 20, pause=0)  # faster than the calls: the pusher has work to die in
        _wait_archived(env, names[-1], 60)
    finally:
        killer.stop.set()
        killer.join()
    env.switch_and_wait_archived(timeout=120)
    time.sleep(0.2)
    watcher.stop.set()
    watcher.join()
    assert killer.kills >= 2, f"only {killer.kills} kills: the test did not test anything"
    _check(env, watcher, names)


# A process that pushes one file (PostgreSQL's own call) reaches the log.* points once: n >= 2
# crashes only the pusher.  A crash of PostgreSQL's call costs the archiver's 10 s restart, so
# that case crashes once.
@pytest.mark.parametrize(("point", "nth", "crashes"), [
    ("log.before_commit", 2, 2),         # the pusher's 2nd push dies before its commit
    ("log.after_commit", 1, 1),          # PostgreSQL's call (or the pusher) dies right after it
    ("log.after_commit", 2, 2),          # the pusher, committed, no marker
    ("write_stream.chunk", 3, 2),        # mid-upload
    ("wal.pusher.before_marker", 1, 2),  # committed, no marker yet
    ("wal.pusher.after_marker", 2, 2),   # marker written, the pusher dies with more to do
])
def test_crash_points_never_acknowledge_an_uncommitted_segment(env: PgEnv, point: str, nth: int, crashes: int):
    crash_dir = env.root / "crash"
    crash_dir.mkdir(exist_ok=True)
    shutil.chown(crash_dir, "postgres", "postgres")
    once = crash_dir / f"{point}-{nth}"
    once.unlink(missing_ok=True)
    for pid in Killer(env, 0).targets():  # a pusher lingering from the case before would push
        os.kill(pid, signal.SIGKILL)      # everything without the crash point
    watcher = Watcher(env, once, max_crashes=crashes)
    watcher.start()
    env.pg.set_settings({"archive_command": f"DRKIT_CRASH_AT={point}:{nth} DRKIT_CRASH_ONCE={once} {_normal(env)}"})
    try:
        names = _burst(env, 12)
        deadline = time.monotonic() + 20
        while watcher.crashes < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        env.pg.set_settings({"archive_command": _normal(env)})
    env.switch_and_wait_archived(timeout=120)
    time.sleep(0.2)
    watcher.stop.set()
    watcher.join()
    assert watcher.crashes >= 1, f"the crash point {point}:{nth} was never reached"
    _check(env, watcher, names)
