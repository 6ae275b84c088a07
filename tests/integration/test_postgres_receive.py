"""``drkit pg receive``: WAL streamed over the replication protocol and sealed every second, with
``archive_timeout`` off -- a point in time 2 s before a SIGKILL of the primary restores exactly;
in synchronous mode every acknowledged commit is in the backup; a SIGKILLed receiver resumes
without a gap; a segment that both the receiver and archive_command push is stored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta

import pytest
from pgenv import DRKIT, PgEnv, make_pg_env


@pytest.fixture
def renv():
    env = make_pg_env("receive")
    with env.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, at timestamptz)")
        c.execute("INSERT INTO events SELECT g, now() FROM generate_series(1, 10) g")
    env.drkit("backup", "main")
    yield env
    env.close()


class Receiver:
    def __init__(self, env: PgEnv, *extra: str) -> None:
        self.env = env
        self.spool = env.root / "spool"
        self.log = open(env.root / "receiver.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [DRKIT, "--config", str(env.config_path), "pg", "receive", "--source", "main", "--dir", str(self.spool),
             "--seal-seconds", "1", "--json", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, **env.env})

    def wait_streaming(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            partial = list(self.spool.glob("*.partial"))
            if partial:
                return
            assert self.proc.poll() is None, self.logtext()
            time.sleep(0.1)
        raise AssertionError(f"the receiver did not start streaming:\n{self.logtext()}")

    def logtext(self) -> str:
        return (self.env.root / "receiver.log").read_text(errors="replace")[-3000:]

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.log.close()
        assert self.proc.returncode == 0, self.logtext()
        return json.loads(out)


def _commit_for(env: PgEnv, seconds: float, first: int) -> list[tuple[int, datetime]]:
    marks = []
    with env.conn() as c:
        deadline = time.monotonic() + seconds
        i = first
        while time.monotonic() < deadline:
            c.execute("INSERT INTO events VALUES (%s, clock_timestamp())", (i,))
            marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
            i += 1
            time.sleep(0.02)
    return marks


def _restored_ids(env: PgEnv, tag: str, *how: str) -> list[int]:
    target = env.root / tag
    res = json.loads(env.drkit("restore", "main", *how, "--target-dir", str(target), "--start", "--json").stdout)
    try:
        with env.restored_conn(target, res["port"]) as c:
            return [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")]
    finally:
        env.stop_datadir(target)


def _log_names(env: PgEnv) -> list[str]:
    from drkit.config import load_config
    from drkit.ops import open_repository

    return open_repository(load_config(env.config_path)).list_log_names("main")


def test_a_point_two_seconds_before_the_primary_dies_restores_exactly(renv: PgEnv):
    env = renv
    rcv = Receiver(env)
    try:
        rcv.wait_streaming()
        marks = _commit_for(env, 5.0, 1000)
        time.sleep(1.5)  # one more seal after the last commit
        env.pg.kill()
        time.sleep(2)
    finally:
        summary = rcv.stop()
    assert summary["seals"] >= 2 and summary["restarts"] >= 1, summary  # the dropped connection was noticed
    received = [n for n in _log_names(env) if n.endswith(".received")]
    assert received, "nothing sealed"
    # archive_timeout is off and no segment filled: archive_command archived none of these commits.
    # T: the mark taken right after the last commit 2 s before the end (a mark lies between its
    # commit and the next one, so "committed at or before T" is exactly the rows up to it).
    t = max(at for _, at in marks if at <= marks[-1][1] - timedelta(seconds=2))
    expected = list(range(1, 11)) + [i for i, at in marks if at <= t]
    assert len(expected) > 20
    assert _restored_ids(env, "pitr", "--point-in-time", t.isoformat()) == expected
    latest = _restored_ids(env, "latest")
    assert latest == list(range(1, 11)) + [i for i, _ in marks], "a commit sealed before the crash is missing"
    listing = json.loads(env.drkit("list", "--json").stdout)[0]
    newest = datetime.fromisoformat(listing["windows"][-1]["end"])
    assert newest >= marks[-1][1] - timedelta(seconds=0.5)


def test_synchronous_receiver_holds_every_acknowledged_commit(renv: PgEnv):
    env = renv
    rcv = Receiver(env, "--synchronous")
    try:
        rcv.wait_streaming()
        with env.conn() as c:
            c.execute("ALTER SYSTEM SET synchronous_standby_names = 'drkit_receive_main'")
            c.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while c.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                            "'drkit_receive_main' AND sync_state = 'sync'").fetchone()[0] == 0:
                assert time.monotonic() < deadline, "the receiver never became the synchronous standby"
                time.sleep(0.1)
        acked = [i for i, _ in _commit_for(env, 2.0, 5000)]
        env.pg.kill()  # right after the last acknowledged commit
        time.sleep(2)
    finally:
        summary = rcv.stop()
    assert summary["seals"] >= 1, summary
    got = _restored_ids(env, "sync-latest")
    assert got == list(range(1, 11)) + acked


def test_a_killed_receiver_resumes_without_a_gap_and_segments_are_stored_once(renv: PgEnv):
    env = renv
    rcv = Receiver(env)
    rcv.wait_streaming()
    first = _commit_for(env, 1.5, 2000)
    rcv.proc.kill()  # SIGKILL: no seal at exit; pg_receivewal dies with it
    rcv.proc.wait()
    rcv.log.close()
    second = _commit_for(env, 1.0, 3000)  # while no receiver runs (the slot keeps the WAL)
    rcv = Receiver(env)
    try:
        rcv.wait_streaming()
        third = _commit_for(env, 1.5, 4000)
        # A dropped connection (the primary stays up): the receiver seals, reconnects, goes on.
        with env.conn() as c:
            assert c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication "
                             "WHERE application_name = 'drkit_receive_main'").fetchone()[0] == 1
        third += _commit_for(env, 1.5, 4500)
        # A full segment, pushed by archive_command and by the receiver alike.
        with env.conn() as c:
            c.execute("INSERT INTO events SELECT g, now() FROM generate_series(100000, 100100) g")
            seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        env.switch_and_wait_archived()
        deadline = time.monotonic() + 30
        while not (rcv.spool / "done" / seg).exists():
            assert time.monotonic() < deadline, f"the receiver did not push {seg}:\n{rcv.logtext()}"
            time.sleep(0.2)
        fourth = _commit_for(env, 1.5, 6000)
        time.sleep(1.5)
    finally:
        summary = rcv.stop()
    assert summary["segments"] >= 1 and summary["restarts"] >= 1, summary
    names = _log_names(env)
    assert names.count(seg) == 1
    ids = _restored_ids(env, "resumed")
    want = (list(range(1, 11)) + [i for i, _ in first + second + third] + list(range(100000, 100101))
            + [i for i, _ in fourth])
    assert ids == sorted(want)
    assert env.drkit("verify", "--json", check=False).returncode == 0
    # Sealed copies of segments now archived complete are needed by no restore point (so forget
    # removes them like any unneeded log record); the newest sealed copy of the current one is.
    from drkit.catalog import load_catalog
    from drkit.config import load_config
    from drkit.dumpers.postgres.chain import restore_points
    from drkit.ops import open_repository

    points = restore_points(load_catalog(open_repository(load_config(env.config_path)), "main"))
    needed = {n for p in points.points for n in p.logs}
    superseded = {n for n in names if n.endswith(".received") and n[:24] in names}
    assert superseded, names
    assert not needed & superseded
    newest = max((n for n in names if n.endswith(".received")), default=None)
    if newest and newest[:24] not in names:
        assert newest in needed
