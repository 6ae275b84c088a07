"""``drkit redis follow`` against a real primary: PITR from recorded command slices, resumes, resyncs.

The workload records, after each step, the wall-clock time and the exact state the test expects;
restores to times between steps must reproduce that state key by key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pgenv import DRKIT
from test_redis_dumper import PASSWORD, RedisEnv, renv  # noqa: F401 - the fixture


def start_follower(env: RedisEnv, slice_seconds: float = 1.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [DRKIT, "--config", str(env.config_path), "redis", "follow", "cache", "--slice-seconds", str(slice_seconds),
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "REDIS_PW": PASSWORD})


def stop_follower(proc: subprocess.Popen[str]) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert PASSWORD not in out + err
    return json.loads(out)


def wait_following(c: redis.Redis, env: RedisEnv | None = None, timeout: float = 60) -> None:
    """Until the primary lists the follower as an online replica (and, given ``env``, the
    recoverable window reaches now: the follower has caught up and sealed a slice)."""
    if env is not None:
        wait_following(c, None, timeout)
        wait_window_end(env, datetime.now(UTC), timeout)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = c.info("replication")
        # The fixture's real replica is one; the follower is the second.
        if sum(isinstance(v, dict) and v.get("state") == "online" for k, v in info.items() if k.startswith("slave")) >= 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"follower never came online: {info}")


def wait_window_end(env: RedisEnv, t: datetime, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = json.loads(env.drkit("list", "cache", "--json").stdout)[0]
        if entry["window"] and datetime.fromisoformat(entry["window"]["end"].replace("Z", "+00:00")) >= t:
            return entry
        time.sleep(0.5)
    raise AssertionError(f"window never reached {t}: {entry}")


@contextmanager
def following(env: RedisEnv, c: redis.Redis, marks: list[tuple[datetime, dict]]) -> Iterator[dict]:
    """Run the follower around the block; afterwards every mark is sealed and the report is filled."""
    report: dict = {}
    f = start_follower(env)
    try:
        wait_following(c, env)
        yield report
        # WAIT counts the follower once it acknowledged -- it acknowledges sealed offsets only.
        assert c.wait(2, 30_000) == 2  # the real replica and the follower
        wait_window_end(env, marks[-1][0])
    finally:
        report.update(stop_follower(f))


def state(c: redis.Redis) -> dict:
    keys = sorted(c.scan_iter("w:*"))
    return {k: c.get(k) for k in keys} | {b"counter": c.get("counter"), b"list": tuple(c.lrange("wl", 0, -1)),
                                         b"ext": c.get("ext"), b"temp": c.get("temp")}


def workload(c: redis.Redis, steps: int, marks: list[tuple[datetime, dict]], pause: float = 0.4) -> None:
    for i in range(steps):
        c.set(f"w:{i}", f"v{i}")
        c.incr("counter")
        c.rpush("wl", i)
        if i >= 3:
            c.delete(f"w:{i - 3}")
        if i == 1:
            # 'ext' was in the base with a 15 s TTL; extend it far: replay must honour the extension
            # even though the original expiry passes before the restore runs.
            c.pexpireat("ext", int(time.time() * 1000) + 3_600_000)
            c.set("temp", "t", px=2500)
        with c.pipeline(transaction=True) as p:  # a MULTI/EXEC block
            p.incr("counter")
            p.incr("counter")
            p.execute()
        time.sleep(pause / 2)
        marks.append((datetime.now(UTC), state(c)))
        time.sleep(pause / 2)


def restored_state(env: RedisEnv, t: datetime, tag: str) -> tuple[dict, dict]:
    out = json.loads(env.drkit("restore", "cache", "--point-in-time", t.isoformat(), "--target-dir",
                               str(env.root / tag), "--start", "--json").stdout)
    env.started_pids.append(out["pid"])
    with redis.Redis(port=out["port"]) as r:
        got = state(r)
        assert out["keys_served"] == r.dbsize(), out  # counted after the replay
        return got, {**out, "pttl_temp": r.pttl("temp"), "pttl_ext": r.pttl("ext")}


def test_follow_point_in_time_between_commands(renv: RedisEnv):  # noqa: F811
    with renv.primary.client() as c:
        c.set("ext", "kept", px=15_000)
        c.set("counter", 0)
        marks: list[tuple[datetime, dict]] = []
        with following(renv, c, marks) as report:
            # One follower per source: a second one is refused, naming the first.
            second = renv.drkit("redis", "follow", "cache", "--duration", "5", check=False)
            assert second.returncode == 6 and "already running" in second.stderr, second.stderr
            workload(c, 12, marks)
    assert report["slices"] >= 2 and report["commands"] > 12 * 5
    # Early: 'temp' alive with what it had left; late: 'temp' expired (not resurrected), 'ext' alive.
    for idx, tag in ((2, "early"), (8, "late"), (11, "last")):
        t, expected = marks[idx]
        got, out = restored_state(renv, t, tag)
        assert got == expected, (tag, got, expected)
        assert expected[b"ext"] == b"kept"
        assert out["slices_replayed"] >= 1
        assert out["pttl_ext"] > 3_000_000  # the extension survived the replay
        if tag == "early":
            assert 0 < out["pttl_temp"] <= 2500
        else:
            assert out["pttl_temp"] == -2
    # The window is refused outside, with the window in the message.
    late = marks[-1][0] + timedelta(hours=1)
    proc = renv.drkit("restore", "cache", "--point-in-time", late.isoformat(), "--target-dir",
                      str(renv.root / "never"), check=False)
    assert proc.returncode == 8 and "outside the recoverable window" in proc.stderr
    assert not (renv.root / "never").exists()


def test_dropped_link_resumes_without_gap_and_full_resync_starts_new_chain(renv: RedisEnv):  # noqa: F811
    with renv.primary.client() as c:
        c.set("counter", 0)
        marks: list[tuple[datetime, dict]] = []
        with following(renv, c, marks) as report:
            workload(c, 4, marks)
            killed = c.client_kill_filter(_type="replica")
            assert killed >= 1
            workload(c, 4, marks)  # written while the follower reconnects with PSYNC
            wait_following(c, renv)
            workload(c, 3, marks)
        assert report["partial_resyncs"] >= 1 and report["full_resyncs"] == 0
        assert len(report["chains_started"]) == 1
        got, _ = restored_state(renv, marks[-1][0], "after-drop")
        assert got == marks[-1][1]  # nothing lost across the drop
        # Follower down while more than the backlog is written: it must start a new chain.
        c.config_set("repl-backlog-size", 16 * 1024)
        for i in range(400):
            c.set(f"bulk:{i}", "z" * 1000)
        c.delete(*[f"bulk:{i}" for i in range(400)])
        with following(renv, c, marks) as report:
            workload(c, 3, marks)
    assert report["full_resyncs"] == 1 and len(report["chains_started"]) == 1
    listing = json.loads(renv.drkit("list", "cache", "--json").stdout)[0]
    assert len(listing["chains"]) == 2
    got, out = restored_state(renv, marks[-1][0], "new-chain")
    assert got == marks[-1][1]
    assert out["chain"] == report["chains_started"][0]


@pytest.mark.parametrize("mode", ["dir", "to"])
def test_follow_restore_without_start_and_into_instance(renv: RedisEnv, mode: str):  # noqa: F811
    with renv.primary.client() as c:
        c.set("counter", 0)
        c.set("ext", "kept", px=15_000)
        marks: list[tuple[datetime, dict]] = []
        with following(renv, c, marks):
            workload(c, 5, marks)
    t, expected = marks[3]
    expected = {k: v for k, v in expected.items() if k != b"temp"}  # 2.5 s TTL: may run out meanwhile
    if mode == "dir":
        target = renv.root / "plain"
        out = json.loads(renv.drkit("restore", "cache", "--point-in-time", t.isoformat(), "--target-dir",
                                    str(target), "--json").stdout)
        assert out["replay_server"] == "saved and stopped"
        assert sorted(p.name for p in target.iterdir()) == ["dump.rdb", "redis.conf", "redis.log"]
        from drkit.sandbox.redis import start_redis

        inst = start_redis(renv.root / "check", settings={"dbfilename": "dump.rdb"})
        renv.others.append(inst)
        inst.stop()
        (inst.data_dir / "dump.rdb").write_bytes((target / "dump.rdb").read_bytes())
        inst.start()
        with inst.client() as r:
            assert {k: v for k, v in state(r).items() if k != b"temp"} == expected
    else:
        from drkit.sandbox.redis import start_redis

        inst = start_redis(renv.root / "live")
        renv.others.append(inst)
        out = json.loads(renv.drkit("restore", "cache", "--point-in-time", t.isoformat(), "--to", inst.url,
                                    "--json").stdout)
        assert out["commands_replayed"] > 0
        with inst.client() as r:
            assert {k: v for k, v in state(r).items() if k != b"temp"} == expected


def test_follower_killed_with_sigkill_resumes_where_it_sealed(renv: RedisEnv):  # noqa: F811
    """A SIGKILLed follower loses only its unsealed slice; the restart continues the chain by
    PSYNC from the last sealed offset (the primary still has those bytes), so nothing is lost."""
    with renv.primary.client() as c:
        c.set("counter", 0)
        f = start_follower(renv)
        marks: list[tuple[datetime, dict]] = []
        try:
            wait_following(c, renv)
            workload(c, 4, marks)
        finally:
            f.kill()
            f.wait(30)
        workload(c, 3, marks)  # written while no follower runs
        f = start_follower(renv)
        try:
            wait_following(c, renv)
            workload(c, 2, marks)
            assert c.wait(2, 30_000) == 2  # the real replica and the follower
            wait_window_end(renv, marks[-1][0])
        finally:
            report = stop_follower(f)
    assert report["partial_resyncs"] == 1 and report["full_resyncs"] == 0 and report["chains_started"] == []
    listing = json.loads(renv.drkit("list", "cache", "--json").stdout)[0]
    assert len(listing["chains"]) == 1
    got, _ = restored_state(renv, marks[-1][0], "after-kill")
    assert got == marks[-1][1]
    # The time the follower was down is a gap in the window (receipt times unknown), not a hole
    # in the data; a point sealed before the kill is still exact.
    windows = [(datetime.fromisoformat(w["start"].replace("Z", "+00:00")),
                datetime.fromisoformat(w["end"].replace("Z", "+00:00"))) for w in listing["windows"]]
    assert len(windows) == 3  # base point, before the kill, after the restart
    before = [m for m in marks if windows[1][0] <= m[0] <= windows[1][1]]
    assert before
    got, _ = restored_state(renv, before[-1][0], "before-kill")
    assert got == before[-1][1]


def test_idle_primary_window_still_advances(renv: RedisEnv):  # noqa: F811
    """No writes and no PINGs for a minute: heartbeats (the primary's offset equals ours) still
    move the window forward every slice, so 'list' reports a true RPO for a quiet source."""
    with renv.primary.client() as c:
        c.config_set("repl-ping-replica-period", 60)
        c.set("k", "v")
        f = start_follower(renv)
        try:
            wait_following(c, renv)
            time.sleep(2)
            t = datetime.now(UTC)
            entry = wait_window_end(renv, t + timedelta(seconds=2), timeout=30)
        finally:
            report = stop_follower(f)
            c.config_set("repl-ping-replica-period", 1)
    assert report["commands"] <= 1  # at most the initial PING: the window moved on heartbeats
    assert entry["current_rpo_seconds"] < 10
    _, out = restored_state(renv, t, "idle")
    with redis.Redis(port=out["port"]) as r:
        assert r.get("k") == b"v"


def test_a_missing_slice_cuts_the_chain_and_a_latest_restore_refuses(renv: RedisEnv):  # noqa: F811
    import yaml

    cfg = yaml.safe_load(renv.config_path.read_text())
    cfg["repository"]["gap_grace"] = 0  # a fresh hole is a gap at once
    renv.config_path.write_text(yaml.safe_dump(cfg))
    with renv.primary.client() as c:
        c.set("counter", 0)
        marks: list[tuple[datetime, dict]] = []
        with following(renv, c, marks):
            workload(c, 8, marks, pause=0.6)
    logs = renv.root / "repo" / "logs" / "cache"
    slices = sorted(logs.iterdir())
    assert len(slices) >= 4, slices
    victim = slices[len(slices) // 2]
    victim.unlink()
    entry = json.loads(renv.drkit("list", "cache", "--json").stdout)[0]
    [gap] = entry["gaps"]
    assert gap["state"] == "gap" and gap["unreachable_logs"]["count"] >= 1
    newest = datetime.fromisoformat(gap["newest_reachable"].replace("Z", "+00:00"))
    assert newest < marks[-1][0]
    target = renv.root / "latest"
    proc = renv.drkit("restore", "cache", "--target-dir", str(target), "--wait-in-flight", "0", check=False)
    assert proc.returncode == 9, proc.stderr
    assert "--point-in-time " + gap["newest_reachable"] in proc.stderr and not target.exists()
    report = json.loads(renv.drkit("verify", "--json", check=False).stdout)
    assert not report["ok"] and any(p["kind"] == "chain" for p in report["problems"])
    # Before the hole, point-in-time restores keep working: the last step recorded before it.
    before = [(t, s) for t, s in marks if t <= newest]
    assert before, (marks[0][0], newest)
    got, _ = restored_state(renv, before[-1][0], "before-hole")
    assert got == before[-1][1]
