"""Node-local AOF mode end to end: BGREWRITEAOF bases, shipped INCR bytes, point-in-time restore.

A real redis-server runs with ``appendonly yes`` and ``aof-timestamp-enabled yes``; drkit reads
its AOF directory.  The workload runs each step in the middle of a second of the *server's* clock,
so the second every command is annotated with is known: a restore to the end of a step's second
must hold exactly what was committed by then, and a restore to the middle of that second must not
hold the step (AOF timestamps have 1 s resolution, and drkit never replays a second that had not
ended by the point in time).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pgenv import workdir
from test_redis_dumper import PASSWORD, RedisEnv, populate, redis_env, snapshot

from drkit.dumpers.redis.aof import parse_manifest
from drkit.sandbox.redis import start_redis

AOF_SETTINGS = {"appendonly": "yes", "aof-timestamp-enabled": "yes", "auto-aof-rewrite-percentage": 0,
                "hash-max-listpack-entries": 64}


@pytest.fixture
def aenv():
    root = workdir("redis-aof")
    primary = start_redis(root / "redis", password=PASSWORD, settings=AOF_SETTINGS)
    with redis_env(root, primary, cache={"type": "redis", "url": primary.url, "password_env": "REDIS_PW",
                                         "data_dir": str(primary.data_dir)}) as env:
        yield env


def server_second(c: redis.Redis) -> tuple[int, float]:
    sec, usec = c.time()
    return sec, usec / 1e6


def at_mid_second(c: redis.Redis, after: int | None = None) -> int:
    """Wait until the server clock is 0.3-0.6 s into a second later than ``after``; return it."""
    while True:
        sec, frac = server_second(c)
        if (after is None or sec > after) and 0.3 <= frac < 0.6:
            return sec
        time.sleep(max(0.01, (1.3 - frac) % 1.0))


def state(c: redis.Redis) -> dict:
    d2 = redis.Redis(**{**{k: c.connection_pool.connection_kwargs.get(k) for k in ("host", "port", "password")},
                        "db": 2})
    try:
        keys = sorted(c.scan_iter("w:*"))
        return {k: c.get(k) for k in keys} | {
            b"counter": c.get("counter"), b"list": tuple(c.lrange("wl", 0, -1)), b"ext": c.get("ext"),
            b"temp": c.get("temp"), b"db2": d2.get("w2")}
    finally:
        d2.close()


def step(c: redis.Redis, i: int, marks: list[tuple[int, dict]], after: int | None = None) -> None:
    """One step of writes inside one server second (later than the last step's, or than
    ``after``); records (that second, the state after it)."""
    last = marks[-1][0] if marks else after
    sec = at_mid_second(c, last)
    c.set(f"w:{i}", f"v{i}")
    c.incr("counter")
    c.rpush("wl", i)
    if i >= 3:
        c.delete(f"w:{i - 3}")
    if i == 1:  # 'ext' was in the base with a short TTL: the extension must survive replay
        c.pexpireat("ext", int(time.time() * 1000) + 3_600_000)
        c.set("temp", "t", px=2500)
    with c.pipeline(transaction=True) as p:
        p.incr("counter")
        p.incr("counter")
        p.execute()
    c.execute_command("SELECT", 2)
    c.set("w2", f"db2-{i}")
    c.execute_command("SELECT", 0)
    after, _ = server_second(c)
    assert after == sec, "a step straddled a second; the machine is too slow for this test"
    marks.append((sec, state(c)))


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def restore(env: RedisEnv, t_ms: int, tag: str) -> tuple[dict, dict]:
    out = json.loads(env.drkit("restore", "cache", "--point-in-time", iso_ms(t_ms), "--target-dir",
                               str(env.root / tag), "--start", "--json").stdout)
    env.started_pids.append(out["pid"])
    with redis.Redis(port=out["port"]) as r:
        return state(r), {**out, "pttl_temp": r.pttl("temp"), "pttl_ext": r.pttl("ext")}


def rewrite(c: redis.Redis) -> None:
    before = c.info("persistence")["aof_rewrites"]
    c.bgrewriteaof()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = c.info("persistence")
        if p["aof_rewrites"] > before and not p["aof_rewrite_in_progress"]:
            return
        time.sleep(0.05)
    raise AssertionError("BGREWRITEAOF did not finish")


def backup(env: RedisEnv, kind: str) -> dict:
    return json.loads(env.drkit("backup", "cache", "--type", kind, "--json").stdout)


def listing(env: RedisEnv) -> dict:
    return json.loads(env.drkit("list", "cache", "--json").stdout)[0]


def test_aof_point_in_time_across_increments_and_a_rewrite(aenv: RedisEnv):
    with aenv.primary.client() as c:
        populate(c, 300)
        before = snapshot(c)
        c.set("ext", "kept", px=15_000)
        c.set("counter", 0)
        full = backup(aenv, "full")
        assert full["metadata"]["method"] == "aof-rewrite"
        marks: list[tuple[int, dict]] = []
        # The base's restore point is the end of its ctime second: the steps come after it.
        for i in range(4):
            step(c, i, marks, after=full["metadata"]["rdb_ctime"])
        inc1 = backup(aenv, "incremental")
        rewrite(c)  # the server rewrites on its own: the chain continues through the next INCR file
        for i in range(4, 7):
            step(c, i, marks)
        inc2 = backup(aenv, "incremental")
        step(c, 7, marks)
        inc3 = backup(aenv, "incremental")
    for inc in (inc1, inc2, inc3):
        assert inc["type"] == "incremental" and inc["metadata"]["chain"] == full["metadata"]["chain"]
        assert inc["metadata"]["parent"] == full["id"]
    assert inc1["metadata"]["commands"] >= 4 * 8
    assert len(inc2["metadata"]["pieces"]) == 2  # the rest of the old INCR file, then the new one
    entry = listing(aenv)
    assert len(entry["windows"]) == 1 and len(entry["chains"]) == 1
    assert entry["chains"][0]["slices"] == 3
    assert datetime.fromisoformat(entry["window"]["end"]) >= datetime.fromtimestamp(marks[-1][0] + 1, UTC)

    # The end of a step's second: exactly the state after it. Its middle: the state before it.
    for idx, tag in ((1, "early"), (5, "after-rewrite"), (7, "last")):
        sec, expected = marks[idx]
        got, out = restore(aenv, sec * 1000 + 999, tag)
        assert got == expected, (tag, got, expected)
        assert out["pttl_ext"] > 3_000_000
        if tag == "early":
            assert 0 < out["pttl_temp"] <= 2500
        else:
            assert out["pttl_temp"] == -2  # expired by then: not resurrected
        assert out["resolution"].startswith("AOF mode: 1 s")
    got, _ = restore(aenv, marks[6][0] * 1000 + 500, "mid-second")
    assert got == marks[5][1]
    # --backup of an incremental: its chain as of the end it covers (after step 6, before step 7).
    out = json.loads(aenv.drkit("restore", "cache", "--backup", inc2["id"], "--target-dir",
                                str(aenv.root / "inc2"), "--start", "--json").stdout)
    aenv.started_pids.append(out["pid"])
    with redis.Redis(port=out["port"]) as r:
        assert state(r) == marks[6][1]
    # The base alone (its own time) holds every type as it was.
    out = json.loads(aenv.drkit("restore", "cache", "--backup", full["id"], "--target-dir",
                                str(aenv.root / "base"), "--start", "--json").stdout)
    aenv.started_pids.append(out["pid"])
    with redis.Redis(port=out["port"]) as r:
        restored = snapshot(r)
    assert {k: v for k, v in restored.items() if k[1] not in (b"ext", b"counter")} == before
    # Outside the window: refused with the window named.
    proc = aenv.drkit("restore", "cache", "--point-in-time", iso_ms((marks[-1][0] + 3600) * 1000),
                      "--target-dir", str(aenv.root / "never"), check=False)
    assert proc.returncode == 8 and "outside the recoverable window" in proc.stderr


def test_rewrite_before_shipping_is_bridged_by_the_hold_or_breaks_the_chain_loudly(aenv: RedisEnv):
    hold = aenv.primary.data_dir / "drkit-aof-hold"
    with aenv.primary.client() as c:
        c.set("counter", 0)
        full = backup(aenv, "full")
        marks: list[tuple[int, dict]] = []
        step(c, 0, marks)
        rewrite(c)  # deletes the INCR file drkit has not shipped yet: the held link still has it
        step(c, 1, marks)
        inc = backup(aenv, "incremental")
        assert inc["type"] == "incremental" and inc["metadata"]["chain"] == full["metadata"]["chain"]
        first = full["metadata"]["aof_position"]["seq"]
        assert [p["seq"] for p in inc["metadata"]["pieces"]] == [first, first + 1]
        step(c, 2, marks)
        for link in hold.iterdir():  # without the hold, the unshipped tail is gone
            link.unlink()
        rewrite(c)
        step(c, 3, marks)
        proc = aenv.drkit("backup", "cache", "--type", "incremental", "--json")
        new = json.loads(proc.stdout)
        assert new["type"] == "full" and new["metadata"]["previous_chain"] == full["metadata"]["chain"]
        assert "drkit holds no link" in new["metadata"]["reason"] and "CHAIN BREAK" in proc.stderr
        step(c, 4, marks)
        backup(aenv, "incremental")
    entry = listing(aenv)
    assert len(entry["chains"]) == 2 and len(entry["windows"]) == 2
    got, _ = restore(aenv, marks[1][0] * 1000 + 999, "old-chain")
    assert got == marks[1][1]
    # Between the old chain's end and the new base lies a gap: refused, not restored to something else.
    w0_end, w1_start = (datetime.fromisoformat(entry["windows"][i][k]) for i, k in ((0, "end"), (1, "start")))
    assert w0_end < w1_start
    proc = aenv.drkit("restore", "cache", "--point-in-time", (w0_end + (w1_start - w0_end) / 2).isoformat(),
                      "--target-dir", str(aenv.root / "gap"), check=False)
    assert proc.returncode == 8 and "outside the recoverable window" in proc.stderr, proc.stderr
    got, out = restore(aenv, marks[4][0] * 1000 + 999, "new-chain")
    assert got == marks[4][1] and out["chain"] == new["metadata"]["chain"]


def newest_incr(env: RedisEnv) -> tuple[int, bytes]:
    """(seq, bytes) of the newest INCR file the server's AOF manifest lists."""
    adir = env.primary.data_dir / "appendonlydir"
    last = parse_manifest((adir / "appendonly.aof.manifest").read_text(), "manifest").incrs[-1]
    return last.seq, (adir / last.name).read_bytes()


def headless_rewrite(env: RedisEnv, c: redis.Redis, marks: list[tuple[int, dict]], tag: str,
                     before_rewrite=None, attempts: int = 1) -> tuple[int, int]:
    """Write, BGREWRITEAOF, write again within one second of the server's clock, so that the INCR
    file the rewrite opens starts with commands and no #TS (Redis annotates a second only once);
    tried ``attempts`` times if the machine straddles a second.  Records (second, state) after
    each try; returns (that second, the new file's seq).

    Not in a second's first 30 ms: the rewrite child stamps the BASE's ctime with time(2), which
    Linux serves from the coarse clock, up to one timer tick (4-10 ms) behind the TIME command's
    gettimeofday -- a rewrite forked 3 ms into second S was stamped S-1 once in CI."""
    for attempt in range(attempts):
        after = marks[-1][0] if marks else None
        while True:  # early in a fresh second, but not its first ticks (below)
            sec, frac = server_second(c)
            if (after is None or sec > after) and 0.03 <= frac < 0.2:
                break
            time.sleep(max(0.005, (1.05 - frac) % 1.0))
        c.set(f"w:{tag}{attempt}a", "before the rewrite")
        c.incr("counter")
        if before_rewrite:
            before_rewrite()
        c.bgrewriteaof()
        c.set(f"w:{tag}{attempt}b", "after the rewrite")
        c.incr("counter")
        seq, data = newest_incr(env)
        end, _ = server_second(c)
        marks.append((end, state(c)))
        wait_rewrite(c)
        if end == sec:
            assert data.startswith(b"*") and b"#TS:" not in data, data[:200]  # the case really happened
            return sec, seq
    pytest.fail("write-rewrite-write straddled a second; the machine is too slow for this test")


def wait_rewrite(c: redis.Redis) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = c.info("persistence")
        if not p["aof_rewrite_in_progress"] and not p["aof_rewrite_scheduled"]:
            return
        time.sleep(0.02)
    raise AssertionError("BGREWRITEAOF did not finish")


def test_incr_file_starting_in_the_second_of_the_last_annotation_inherits_it(aenv: RedisEnv):
    """Redis writes no #TS before the first commands of an INCR file opened by a rewrite in the
    same second as its last annotation.  Those commands belong to that second: at a chain's start
    (inherited from the base's ctime) and inside an incremental that ships across the rewrite."""
    hold = aenv.primary.data_dir / "drkit-aof-hold"
    with aenv.primary.client() as c:
        c.set("counter", 0)
        first = backup(aenv, "full")
        marks: list[tuple[int, dict]] = []
        # Without the hold the next incremental starts a new chain from this rewrite's BASE, whose
        # first INCR file starts headless.
        base_sec, base_seq = headless_rewrite(
            aenv, c, marks, "h", before_rewrite=lambda: [link.unlink() for link in hold.iterdir()], attempts=5)
        new = backup(aenv, "incremental")
        assert new["type"] == "full" and new["metadata"]["previous_chain"] == first["metadata"]["chain"]
        assert new["metadata"]["rdb_ctime"] == base_sec
        assert new["metadata"]["aof_position"]["seq"] == base_seq
        chain_marks = [marks[-1]]
        # Inside the chain: the old file's last annotation is the second of the new file's start
        # (one try: a second rewrite before the incremental would drop the file in between).
        sec2, seq2 = headless_rewrite(aenv, c, chain_marks, "k")
        before2 = chain_marks[-2][1]
        step(c, 9, chain_marks)
        inc = backup(aenv, "incremental")
    meta = inc["metadata"]
    assert inc["type"] == "incremental" and meta["chain"] == new["metadata"]["chain"]
    assert [p["seq"] for p in meta["pieces"]] == list(range(base_seq, seq2 + 1))
    assert meta["inherited_from"] == "base" and meta["inherited_ts"] == base_sec
    assert meta["untimed_commands"] >= 2  # SELECT + SET + INCR after the rewrite, before any #TS
    assert meta["first_ts_ms"] == meta["ts_at_start_ms"] == base_sec * 1000 + 999
    entry = listing(aenv)
    window = entry["windows"][-1]
    assert datetime.fromisoformat(window["start"]) == datetime.fromtimestamp(base_sec, UTC) + timedelta(
        milliseconds=999)
    assert datetime.fromisoformat(window["end"]) >= datetime.fromtimestamp(chain_marks[-1][0] + 1, UTC)
    assert sec2 > base_sec
    for i, (sec, expected) in enumerate(chain_marks):  # every key as committed by each second's end
        got, out = restore(aenv, sec * 1000 + 999, f"headless-{i}")
        assert got == expected, (sec, got, expected)
        assert out["chain"] == new["metadata"]["chain"]
    # The middle of the in-chain rewrite's second: everything before it, nothing of it.
    got, _ = restore(aenv, sec2 * 1000 + 500, "headless-mid")
    assert got == before2


def test_corrupt_or_truncated_aof_is_named_and_nothing_committed(aenv: RedisEnv):
    with aenv.primary.client() as c:
        c.set("counter", 0)
        backup(aenv, "full")
        marks: list[tuple[int, dict]] = []
        step(c, 0, marks)
        backup(aenv, "incremental")
    incr = sorted((aenv.primary.data_dir / "appendonlydir").glob("*.incr.aof"))[-1]
    committed = len(listing(aenv)["backups"])
    size = incr.stat().st_size
    tail = incr.read_bytes()[-10:]
    with open(incr, "r+b") as fh:  # cut below what drkit already shipped
        fh.truncate(size - 10)
    proc = aenv.drkit("backup", "cache", "--type", "incremental", check=False)
    assert proc.returncode == 5 and incr.name in proc.stderr and "truncated" in proc.stderr, proc.stderr
    with open(incr, "ab") as fh:  # the shipped bytes back, then bytes that are not AOF
        fh.write(tail + b"*2\r\n$3\r\nSET\r\nnot-a-bulk\r\n")
    proc = aenv.drkit("backup", "cache", "--type", "incremental", check=False)
    assert proc.returncode == 5 and incr.name in proc.stderr and f"offset {size + 13}" in proc.stderr, proc.stderr  # the bad argument
    assert len(listing(aenv)["backups"]) == committed


def test_incremental_refuses_without_timestamps_or_aof_and_names_a_dead_server(aenv: RedisEnv):
    with aenv.primary.client() as c:
        backup(aenv, "full")
        c.config_set("aof-timestamp-enabled", "no")
        proc = aenv.drkit("backup", "cache", "--type", "incremental", check=False)
        assert proc.returncode == 2 and "aof-timestamp-enabled" in proc.stderr
        c.config_set("aof-timestamp-enabled", "yes")
        c.config_set("appendonly", "no")
        proc = aenv.drkit("backup", "cache", "--type", "incremental", check=False)
        assert proc.returncode == 2 and "appendonly yes" in proc.stderr
    committed = listing(aenv)["backups"]
    aenv.primary.kill()  # the server is gone: a clear message, exit 10, nothing new in the repository
    proc = aenv.drkit("backup", "cache", "--type", "incremental", check=False)
    assert proc.returncode == 10 and "cannot query Redis" in proc.stderr, proc.stderr
    assert listing(aenv)["backups"] == committed
