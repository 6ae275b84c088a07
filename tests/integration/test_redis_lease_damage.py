"""A damaged ``redis follow`` lease is stale, not fatal: the running follower rewrites it and goes
on recording, ``drkit verify`` names it while it is damaged, and a new follower takes it over."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from test_redis_dumper import PASSWORD, RedisEnv, renv  # noqa: F401 - the fixture
from test_redis_follow import start_follower, wait_following, wait_window_end

LEASE = "leases/follow/cache"
RENEW_EVERY = 60 / 4  # the follower's lease ttl is max(60 s, 3 slices); it renews every ttl / 4


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the follower; it must exit 0.  Returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert PASSWORD not in out + err
    return err


def wait_change(path: Path, old: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = path.read_bytes()
        if now != old:
            return now
        time.sleep(0.1)
    raise AssertionError(f"{path} did not change within {timeout} s")


def flip(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(data)


def lease_problems(env: RedisEnv) -> tuple[int, list[dict]]:
    proc = env.drkit("verify", "--json", check=False)
    report = json.loads(proc.stdout)
    return proc.returncode, [p for p in report["problems"] if p.get("kind") == "lease"]


def test_damaged_follow_lease_is_rewritten_by_the_running_follower(renv: RedisEnv):  # noqa: F811
    lease = renv.root / "repo" / LEASE
    with renv.primary.client() as c:
        c.set("before", 1)
        follower = start_follower(renv)
        try:
            wait_following(c, renv)
            # Damage it just after a renewal, so that verify runs before the next one rewrites it.
            wait_change(lease, lease.read_bytes(), RENEW_EVERY + 10)
            damaged = flip(lease)
            t_damaged = time.monotonic()
            code, problems = lease_problems(renv)
            assert time.monotonic() - t_damaged < RENEW_EVERY, "verify was too slow to see the damage"
            assert lease.read_bytes() == damaged
            assert code == 5
            assert [p["object"] for p in problems] == [LEASE]
            assert problems[0]["affects"] == [] and "treated as stale by the next job" in problems[0]["error"]
            # At its next renewal the follower rewrites its lease instead of dying.
            wait_change(lease, damaged, RENEW_EVERY + 10)
            assert follower.poll() is None, follower.stderr.read() if follower.stderr else ""
            assert lease_problems(renv)[1] == []
            c.set("after", 2)
            wait_window_end(renv, datetime.now(UTC))  # still recording
            assert follower.poll() is None
        finally:
            err = stop(follower)
    assert f"lease {LEASE} is damaged" in err and "rewrites it" in err
    assert not lease.exists()  # released on exit


def test_new_follower_takes_over_a_damaged_lease(renv: RedisEnv):  # noqa: F811
    lease = renv.root / "repo" / LEASE
    with renv.primary.client() as c:
        c.set("k", 1)
        follower = start_follower(renv)
        try:
            wait_following(c, renv)
            left = lease.read_bytes()  # what a follower that died without releasing leaves behind
        finally:
            stop(follower)
        lease.parent.mkdir(parents=True, exist_ok=True)
        lease.write_bytes(left[:-1] + bytes([left[-1] ^ 0x01]))
        code, problems = lease_problems(renv)
        assert code == 5 and [p["object"] for p in problems] == [LEASE]
        follower = start_follower(renv)  # no manual deletion
        try:
            wait_following(c, renv)
            c.set("k", 2)
            wait_window_end(renv, datetime.now(UTC))
        finally:
            err = stop(follower)
    assert f"lease {LEASE} is damaged" in err and "treating it as stale" in err
