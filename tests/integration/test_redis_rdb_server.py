"""drkit.dumpers.redis.rdb against real redis-server 7.0 processes started (and stopped) here."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from drkit.dumpers.redis.rdb import (
    Entry,
    Function,
    RdbParser,
    ValidatingReader,
    crc64,
    restore_payload,
    rewrite,
)
from drkit.sandbox.redis import RedisInstance, start_redis

CHECK_RDB = shutil.which("redis-check-rdb") or "/usr/bin/redis-check-rdb"
pytestmark = [pytest.mark.integration]

SHORT_TTL_MS = 8_000
FUNCTION_CODE = "#!lua name=drkitlib\nredis.register_function('echo1', function(keys, args) return args[1] end)"


def start_server(workdir: Path, **settings: str) -> RedisInstance:
    """A sandbox redis-server whose data directory (``workdir/data``) holds ``dump.rdb``.

    A missing redis-server fails the test (SandboxError), it never skips.
    """
    return start_redis(workdir, settings={k.replace("_", "-"): v for k, v in settings.items()})


def populate(r: redis.Redis) -> None:
    """Every data type, forcing each encoding Redis 7.0 can write."""
    r.config_set("rdbcompression", "yes")
    p = r.pipeline(transaction=False)
    p.set("str:int", 12345).set("str:neg", -42).set("str:short", "hello")
    p.set("str:long", "abc" * 200).set("str:bin", bytes(range(256)) * 3 + os.urandom(64))
    p.set("str:big", os.urandom(150_000)).set("12345678", "numeric key").set(b"\x00\xffbin\x01", "binary key")
    p.set("k" * 80 + ":compressible-key", "value").set("bitmap", b"").setbit("bitmap", 100_000, 1)
    p.rpush("list:small", "a", "b", 1, 2)
    p.rpush("list:big", *[f"item-{i}" for i in range(20_000)])
    p.hset("hash:small", mapping={"f1": "v1", "f2": 2})
    p.hset("hash:big", mapping={f"field-{i}": f"value-{i}" * 3 for i in range(1000)})
    p.sadd("set:intset", *range(100)).sadd("set:strings", "a", "b", "c")
    p.sadd("set:bigints", *range(0, 6000, 10)).sadd("set:big", *[f"member-{i}" for i in range(1000)])
    p.zadd("zset:small", {"a": 1, "b": 2.5})
    p.zadd("zset:big", {**{f"m{i}": i / 7 for i in range(500)}, "inf": float("inf"), "-inf": float("-inf")})
    p.pfadd("hll:sparse", "a", "b", "c").pfadd("hll:dense", *[f"e{i}" for i in range(5000)])
    p.execute()
    r.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", 1000)  # larger elements: PLAIN nodes
    r.rpush("list:plain", "x" * 20_000, "y")
    r.config_set("list-compress-depth", 1)
    r.rpush("list:compressed", *[f"compressible-item-{i % 10}" for i in range(10_000)])
    r.config_set("list-compress-depth", 0)
    # Streams: deleted entries, two groups, pending entries, several consumers (one without PEL).
    ids = [r.xadd("stream", {"n": i, "payload": "p" * (i % 50)}) for i in range(1500)]
    r.xdel("stream", *ids[10:20])
    r.xgroup_create("stream", "g1", id="0")
    r.xgroup_create("stream", "g2", id="$")
    r.xreadgroup("g1", "c1", {"stream": ">"}, count=30)
    r.xreadgroup("g1", "c2", {"stream": ">"}, count=5)
    r.xgroup_createconsumer("stream", "g1", "c3")
    r.xack("stream", "g1", *ids[:5])
    r.xgroup_create("stream:empty", "g", id="$", mkstream=True)
    # TTLs (db 0 and db 3).
    r.set("ttl:far", "v", ex=1_000_000)
    r.hset("ttl:hash", "f", "v")
    r.pexpireat("ttl:hash", int(time.time() * 1000) + 50_000_000)
    r3 = r.connection_pool.connection_kwargs
    db3 = redis.Redis(host=r3["host"], port=r3["port"], db=3)
    db3.set("db3:str", "three")
    db3.rpush("db3:list", *range(50))
    db3.set("db3:ttl", "x", ex=500_000)
    db3.sadd("db3:set", "x", "y")
    r.function_load(FUNCTION_CODE)
    r.set("ttl:short", "soon gone", px=SHORT_TTL_MS)
    db3.set("db3:short", "soon gone", px=SHORT_TTL_MS)


def contents(c: redis.Redis, key: bytes) -> object:
    """A comparable view of a value (hashtable-encoded values re-DUMP in another order)."""
    kind = c.type(key)
    if kind == b"string":
        return c.get(key)
    if kind == b"list":
        return c.lrange(key, 0, -1)
    if kind == b"set":
        return c.smembers(key)
    if kind == b"hash":
        return c.hgetall(key)
    if kind == b"zset":
        return c.zrange(key, 0, -1, withscores=True)
    return c.dump(key)  # streams: DUMP is deterministic


def snapshot(server: RedisInstance) -> dict[tuple[int, bytes], tuple[bytes, int, object]]:
    """(db, key) -> (DUMP payload, PTTL, contents) of every key in dbs 0..15."""
    out = {}
    for db in range(16):
        c = server.client(db)
        for k in c.scan_iter(count=1000):
            out[(db, k)] = (c.dump(k), c.pttl(k), contents(c, k))
    return out


def assert_same(got: tuple, want: tuple, key: object) -> None:
    """Same DUMP, or (hashtable encodings) the same type and contents."""
    if got[0] != want[0]:
        assert got[0][0] == want[0][0] and got[2] == want[2], key


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    server = start_server(tmp_path_factory.mktemp("redis-src"), maxmemory_policy="allkeys-lfu",
                          enable_debug_command="local")
    d = server.data_dir
    try:
        r = server.client()
        populate(r)
        state = snapshot(server)
        sec, usec = r.time()
        saved_ms = sec * 1000 + usec // 1000
        r.save()
        # The same data without a checksum, and with LRU idle times instead of LFU counters.
        w2 = tmp_path_factory.mktemp("redis-nocrc")
        d2 = w2 / "data"
        d2.mkdir()
        shutil.copy(d / "dump.rdb", d2 / "dump.rdb")
        other = start_server(w2, rdbchecksum="no", maxmemory_policy="allkeys-lru")
        try:
            other.client().save()
        finally:
            other.stop()
        yield {"dir": d, "state": state, "saved_ms": saved_ms, "server": server,
               "rdb": (d / "dump.rdb").read_bytes(), "nocrc": (d2 / "dump.rdb").read_bytes()}
    finally:
        server.stop()


def test_iterate_matches_server_and_restore_payload_equals_dump(source: dict) -> None:
    parser = RdbParser(io.BytesIO(source["rdb"]), chunk_size=1 << 16)
    recs = list(parser)
    entries = [e for e in recs if isinstance(e, Entry)]
    state = source["state"]
    assert {(e.db, e.key) for e in entries} == set(state)
    assert len(entries) == len(state)
    assert {e.db for e in entries} == {0, 3}
    for e in entries:
        assert restore_payload(e, parser.version) == state[(e.db, e.key)][0], e.key
        assert (e.expire_ms is not None) == (state[(e.db, e.key)][1] >= 0), e.key
        assert e.lfu_freq is not None
    assert {0, 2, 4, 5, 11, 16, 17, 18, 19} <= {e.type for e in entries}
    assert any(e.type == 0 and e.value[:1] == b"\xc3" for e in entries)  # an LZF string value
    by_key = {e.key: e for e in entries}
    assert by_key[b"list:plain"].value[1:2] == b"\x01"  # quicklist2 PLAIN node first
    assert b"\x02\xc3" in by_key[b"list:compressed"].value  # a PACKED node saved LZF-compressed
    assert len(by_key[b"k" * 80 + b":compressible-key"].key) == 97  # LZF-compressed key decoded
    assert [f.payload.decode() for f in recs if isinstance(f, Function)] == [FUNCTION_CODE]
    assert parser.checksummed and parser.size == len(source["rdb"])


def test_validating_reader_passes_through(source: dict) -> None:
    reader = ValidatingReader(io.BytesIO(source["rdb"]), expected_size=len(source["rdb"]))
    assert reader.readall() == source["rdb"]
    assert (reader.version, reader.checksummed) == (10, True)
    plain = ValidatingReader(io.BytesIO(source["nocrc"]))
    assert plain.readall() == source["nocrc"] and not plain.checksummed
    lru = [e for e in RdbParser(io.BytesIO(source["nocrc"])) if isinstance(e, Entry)]
    assert all(e.lru_idle is not None and e.lfu_freq is None for e in lru)


def enc(data: bytes) -> bytes:
    assert len(data) < 64
    return bytes([len(data)]) + data


def test_restore_into_running_server(source: dict, tmp_path: Path) -> None:
    target = start_server(tmp_path)
    try:
        c = {db: target.client(db) for db in (0, 3)}
        parser = RdbParser(io.BytesIO(source["rdb"]))
        for e in parser:
            if isinstance(e, Entry):
                ttl = max(1, source["state"][(e.db, e.key)][1]) if e.expire_ms is not None else 0
                c[e.db].restore(e.key, ttl, restore_payload(e, parser.version), replace=True)
        assert snapshot(target).keys() == source["state"].keys()
        for k, value in snapshot(target).items():
            assert_same(value, source["state"][k], k)
        # Old encodings Redis 7.0 no longer writes but still loads (RDB version 6 payloads).
        old = (b"\x01" + enc(b"old:list") + b"\x03" + enc(b"a") + enc(b"b") + b"\xc0\x07"
               + b"\x03" + enc(b"old:zset") + b"\x03" + enc(b"x") + b"\x031.5" + enc(b"y") + b"\xfe" + enc(b"z") + b"\xff"
               + b"\x04" + enc(b"old:hash") + b"\x01" + enc(b"f") + enc(b"v")
               + b"\x05" + enc(b"old:zset2") + b"\x01" + enc(b"m") + struct.pack("<d", 2.25))
        data = b"REDIS0006\xfe\x00" + old + b"\xff"
        data += crc64(data).to_bytes(8, "little")
        for e in RdbParser(io.BytesIO(data)):
            if isinstance(e, Entry):
                c[0].restore(e.key, 0, restore_payload(e, 6))
        assert c[0].lrange("old:list", 0, -1) == [b"a", b"b", b"7"]
        assert c[0].zrange("old:zset", 0, -1, withscores=True) == [
            (b"z", float("-inf")), (b"x", 1.5), (b"y", float("inf"))]
        assert c[0].hgetall("old:hash") == {b"f": b"v"}
        assert c[0].zscore("old:zset2", "m") == 2.25
    finally:
        target.stop()


def check_rdb(path: Path) -> None:
    res = subprocess.run([CHECK_RDB, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def load_rewritten(source: dict, tmp_path: Path, at_ms: int, name: str = "rdb") -> tuple[dict, RedisInstance]:
    now_ms = int(time.time() * 1000)
    (tmp_path / "data").mkdir()
    with (tmp_path / "data" / "dump.rdb").open("wb") as dst:
        stats = rewrite(io.BytesIO(source[name]), dst, at_ms=at_ms, now_ms=now_ms)
    check_rdb(tmp_path / "data" / "dump.rdb")
    return stats, start_server(tmp_path)


def test_rewrite_at_save_time_loads_identically(source: dict, tmp_path: Path) -> None:
    stats, target = load_rewritten(source, tmp_path, source["saved_ms"])
    try:
        state, got = source["state"], snapshot(target)
        assert got.keys() == state.keys()
        assert stats.keys_kept == len(state) and stats.keys_expired == 0
        assert stats.keys_with_ttl == sum(1 for _, ttl, _ in state.values() if ttl >= 0)
        for k, (dump, ttl, value) in got.items():
            assert_same((dump, ttl, value), state[k], k)
            assert (ttl >= 0) == (state[k][1] >= 0), k
            if ttl >= 0:
                assert abs(ttl - state[k][1]) < 5_000, (k, ttl, state[k][1])
        assert b"drkitlib" in repr(target.client().function_list()).encode()
        assert target.client().fcall("echo1", 0, "hi") == b"hi"
    finally:
        target.stop()


def test_rewrite_later_point_drops_short_ttl(source: dict, tmp_path: Path) -> None:
    later = 2 * SHORT_TTL_MS
    stats, target = load_rewritten(source, tmp_path, source["saved_ms"] + later)
    try:
        state, got = source["state"], snapshot(target)
        short = {(0, b"ttl:short"), (3, b"db3:short")}
        assert got.keys() == state.keys() - short
        assert stats.keys_expired == 2
        far_ttl = got[(0, b"ttl:far")][1]
        assert abs(far_ttl - (state[(0, b"ttl:far")][1] - later)) < 5_000
    finally:
        target.stop()


def test_rewrite_unchecksummed_lru_file(source: dict, tmp_path: Path) -> None:
    stats, target = load_rewritten(source, tmp_path, source["saved_ms"], name="nocrc")
    try:
        checked = ValidatingReader(io.BytesIO((tmp_path / "data" / "dump.rdb").read_bytes()))
        assert checked.readall() and checked.checksummed  # a fresh CRC64 is written
        assert snapshot(target).keys() == source["state"].keys()
        assert stats.bytes_in == len(source["nocrc"])
    finally:
        target.stop()
