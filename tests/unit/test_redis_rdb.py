"""Pure-logic tests of drkit.dumpers.redis.rdb over small hand-built RDB files."""

from __future__ import annotations

import io
import itertools
import os
import struct
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit.dumpers.redis import rdb as rdb_mod
from drkit.dumpers.redis import rdb_types
from drkit.dumpers.redis.rdb import (
    Aux,
    ChunkStream,
    Entry,
    Eof,
    Function,
    Header,
    RdbError,
    RdbParser,
    RdbUnsupported,
    ResizeDb,
    SelectDb,
    ValidatingReader,
    crc64,
    iter_records,
    native_available,
    restore_payload,
    rewrite,
)
from drkit.errors import IntegrityError

# -- builders --------------------------------------------------------------------------------


def enc_len(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | n >> 8, n & 0xFF])
    if n < 2**32:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def s(data: bytes) -> bytes:
    return enc_len(len(data)) + data


def lzf_str(compressed: bytes, ulen: int) -> bytes:
    return b"\xc3" + enc_len(len(compressed)) + enc_len(ulen) + compressed


def rdb(body: bytes, version: int = 10, checksum: bool = True) -> bytes:
    data = b"REDIS%04d" % version + body + b"\xff"
    if version >= 5:
        data += crc64(data).to_bytes(8, "little") if checksum else bytes(8)
    return data


def key(type_: int, name: bytes, value: bytes, prefix: bytes = b"") -> bytes:
    return prefix + bytes([type_]) + s(name) + value


def entries(data: bytes, **kw) -> list[Entry]:
    return [r for r in RdbParser(io.BytesIO(data), **kw) if isinstance(r, Entry)]


def validate(data: bytes, read_size: int = 1 << 16, **kw) -> ValidatingReader:
    reader = ValidatingReader(io.BytesIO(data), **kw)
    out = bytearray()
    while chunk := reader.read(read_size):
        out += chunk
    assert bytes(out) == data
    return reader


SENTINEL = key(0, b"after", s(b"end"))
# (type, value) covering every supported value layout.
STREAM_BASE = (enc_len(1) + s(bytes(16)) + s(b"listpack-bytes") + enc_len(3) + enc_len(5) + enc_len(0))
STREAM_V2_IDS = enc_len(1) + enc_len(0) + enc_len(0) + enc_len(0) + enc_len(3)


def stream_groups(v2: bool, v3: bool) -> bytes:
    out = enc_len(1) + s(b"grp") + enc_len(5) + enc_len(0) + (enc_len(3) if v2 else b"")
    out += enc_len(2) + (bytes(16) + struct.pack("<Q", 123) + enc_len(1)) * 2
    out += enc_len(2)
    for name in (b"c1", b"c2"):
        out += s(name) + struct.pack("<Q", 99) + (struct.pack("<Q", 98) if v3 else b"")
        out += enc_len(1) + bytes(16)
    return out


VALUES = [
    (0, s(b"plain")),
    (0, b"\xc0\x85"),
    (0, b"\xc1\x10\x27"),
    (0, b"\xc2\xa0\x86\x01\x00"),
    (0, lzf_str(b"\x02abc\x80\x02", 9)),
    (1, enc_len(3) + s(b"a") + s(b"b") + b"\xc0\x01"),
    (2, enc_len(2) + s(b"x") + s(b"y")),
    (3, enc_len(4) + s(b"a") + b"\x031.5" + s(b"b") + b"\xfd" + s(b"c") + b"\xfe" + s(b"d") + b"\xff"),
    (4, enc_len(2) + s(b"f1") + s(b"v1") + s(b"f2") + s(b"v2")),
    (5, enc_len(2) + s(b"m1") + struct.pack("<d", 1.5) + s(b"m2") + struct.pack("<d", -2.0)),
    (9, s(b"zipmap-blob")),
    (10, s(b"ziplist-blob")),
    (11, s(b"\x02\x00\x00\x00\x01\x00\x00\x00\x05\x00")),
    (12, s(b"zset-ziplist")),
    (13, s(b"hash-ziplist")),
    (14, enc_len(2) + s(b"zl1") + s(b"zl2")),
    (15, STREAM_BASE + stream_groups(False, False)),
    (16, s(b"hash-listpack")),
    (17, s(b"zset-listpack")),
    (18, enc_len(2) + enc_len(2) + s(b"lp1") + enc_len(1) + lzf_str(b"\x00x\xe0\x05\x00", 9)),
    (19, STREAM_BASE + STREAM_V2_IDS + stream_groups(True, False)),
    (20, s(b"set-listpack")),
    (21, STREAM_BASE + STREAM_V2_IDS + stream_groups(True, True)),
]


@pytest.mark.parametrize(("type_", "value"), VALUES, ids=[f"type{t}-{i}" for i, (t, _) in enumerate(VALUES)])
def test_each_type_value_end_is_found(type_: int, value: bytes) -> None:
    data = rdb(b"\xfe\x00" + key(type_, b"k", value) + SENTINEL)
    got = entries(data)
    assert [(e.key, e.type, e.value) for e in got] == [(b"k", type_, value), (b"after", 0, s(b"end"))]
    assert got[0].offset == 11


def test_all_types_in_one_file_with_tiny_chunks() -> None:
    body = b"".join(key(t, b"k%d" % i, v) for i, (t, v) in enumerate(VALUES))
    data = rdb(b"\xfe\x00" + body)
    for chunk in (1, 2, 7, 64, 1 << 20):
        got = entries(data, chunk_size=chunk)
        assert [(e.type, e.value) for e in got] == VALUES


def test_length_encodings() -> None:
    for n in (0, 63, 64, 300, 16383, 16384, 70000, 2**32 - 1, 2**32, 2**40):
        enc = enc_len(n)
        assert rdb_types.read_len(enc, 0) == (n, len(enc))
    for n in (5, 300, 70000):
        data = rdb(key(0, b"k", s(b"v" * n)))
        assert entries(data)[0].value == s(b"v" * n)
    # A 32-bit length used for a short string is legal too.
    value = b"\x80" + (3).to_bytes(4, "big") + b"abc"
    assert entries(rdb(key(0, b"k", value)))[0].value == value


def test_int_and_lzf_keys_are_decoded() -> None:
    body = (b"\x00\xc0\xfb" + s(b"v") + b"\x00\xc1\xe8\x03" + s(b"v") + b"\x00\xc2\xa0\x86\x01\x00" + s(b"v")
            + b"\x00" + lzf_str(b"\x02abc\x80\x02", 9) + s(b"v"))
    assert [e.key for e in entries(rdb(body))] == [b"-5", b"1000", b"100000", b"abcabcabc"]


def test_lzf_decompress_long_backref() -> None:
    # literal "ab", then a back-reference of 7 + 3 + 2 = 12 bytes at distance 2 (overlapping).
    assert rdb_types.lzf_decompress(b"\x01ab\xe0\x03\x01", 14) == b"ab" * 7
    with pytest.raises(rdb_types.BadEncoding):
        rdb_types.lzf_decompress(b"\x01ab\xe0\x03\x01", 15)
    with pytest.raises(rdb_types.BadEncoding):
        rdb_types.lzf_decompress(b"\x20\x05", 4)  # reference before the start


def test_records_expiry_idle_freq_aux_function_resize() -> None:
    body = (b"\xfa" + s(b"redis-ver") + s(b"7.0.15") + b"\xfa" + s(b"ctime") + b"\xc2\x00\x00\x00\x65"
            + b"\xf5" + s(b"#!lua name=lib\n...") + b"\xfe\x03\xfb\x02\x01"
            + key(0, b"ms", s(b"v"), b"\xfc" + struct.pack("<Q", 1_700_000_000_123))
            + key(0, b"sec", s(b"v"), b"\xfd" + struct.pack("<I", 1_700_000_000))
            + key(0, b"idle", s(b"v"), b"\xf8" + enc_len(300))
            + key(0, b"freq", s(b"v"), b"\xfc" + struct.pack("<Q", 5) + b"\xf9\x07"))
    recs = list(iter_records(io.BytesIO(rdb(body))))
    assert isinstance(recs[0], Header) and recs[0].version == 10
    assert recs[1] == Aux(b"redis-ver", b"7.0.15", 9)
    assert recs[2].value == str(0x65000000).encode()
    assert isinstance(recs[3], Function) and recs[3].payload.startswith(b"#!lua")
    assert isinstance(recs[4], SelectDb) and recs[4].db == 3
    assert isinstance(recs[5], ResizeDb) and (recs[5].db_size, recs[5].expires_size) == (2, 1)
    ents = recs[6:10]
    assert [(e.db, e.key, e.expire_ms, e.lru_idle, e.lfu_freq) for e in ents] == [
        (3, b"ms", 1_700_000_000_123, None, None), (3, b"sec", 1_700_000_000_000, None, None),
        (3, b"idle", None, 300, None), (3, b"freq", 5, None, 7)]
    assert isinstance(recs[10], Eof) and recs[10].checksummed and recs[10].size == len(rdb(body))


# -- corruption ------------------------------------------------------------------------------

SAMPLE = rdb(b"\xfa" + s(b"redis-ver") + s(b"7.0.15") + b"\xfe\x00\xfb\x03\x01"
             + b"".join(key(t, b"k%d" % i, v) for i, (t, v) in enumerate(VALUES[:10]))
             + key(0, b"ttl", s(b"v"), b"\xfc" + struct.pack("<Q", 10**12)))


def test_truncation_at_every_offset_is_reported() -> None:
    for cut in range(len(SAMPLE)):
        data = SAMPLE[:cut]
        with pytest.raises(RdbError) as exc:
            list(RdbParser(io.BytesIO(data), chunk_size=5))
        assert "truncated" in str(exc.value) or "not an RDB" in str(exc.value), (cut, exc.value)
        with pytest.raises(RdbError):
            validate(data, read_size=3)
    assert isinstance(RdbError("x"), IntegrityError)


def test_flipped_byte_is_a_checksum_error_naming_the_offset() -> None:
    pos = SAMPLE.index(b"7.0.15") + 2
    bad = SAMPLE[:pos] + b"X" + SAMPLE[pos + 1:]
    with pytest.raises(RdbError, match=rf"checksum mismatch.*offset {len(SAMPLE) - 8}") as exc:
        list(iter_records(io.BytesIO(bad)))
    assert exc.value.offset == len(SAMPLE) - 8
    with pytest.raises(RdbError, match=rf"checksum mismatch.*offset {len(SAMPLE) - 8}"):
        validate(bad, read_size=5)
    bad_crc = SAMPLE[:-1] + bytes([SAMPLE[-1] ^ 1])
    with pytest.raises(RdbError, match="checksum mismatch"):
        validate(bad_crc)


def test_every_single_byte_corruption_is_an_rdb_error() -> None:
    for pos in range(9, len(SAMPLE)):
        for mask in (0x01, 0x40, 0x80, 0xFF):
            bad = SAMPLE[:pos] + bytes([SAMPLE[pos] ^ mask]) + SAMPLE[pos + 1:]
            with pytest.raises(RdbError):
                list(RdbParser(io.BytesIO(bad), chunk_size=16))
            with pytest.raises(RdbError):
                rewrite(io.BytesIO(bad), io.BytesIO(), at_ms=0, now_ms=0, chunk_size=16)


def test_structural_corruption_names_offset() -> None:
    data = rdb(b"\xfe\x00" + b"\x00" + s(b"k") + b"\xc7xx")
    with pytest.raises(RdbError, match="unknown string encoding 0xc7.*at offset 14"):
        list(iter_records(io.BytesIO(data)))


@pytest.mark.parametrize(("type_", "message", "err"), [
    (8, r"unknown RDB type 8 \(0x08\) at offset 11", RdbError),
    (26, "unknown RDB type 26", RdbError),
    (22, r"RDB type 22 \(hash with field TTLs, Redis 7.4\+\) is not supported \(key b'mykey'\)", RdbUnsupported),
    (24, r"RDB type 24 \(hash with field TTLs, Redis 7.4\+\) is not supported", RdbUnsupported),
    (7, r"RDB type 7 \(module data type\) is not supported \(key b'mykey'\)", RdbUnsupported),
    (6, "module", RdbUnsupported),
])
def test_unknown_and_unsupported_types(type_: int, message: str, err: type) -> None:
    data = rdb(b"\xfe\x00" + key(type_, b"mykey", s(b"xx")))
    with pytest.raises(err, match=message) as exc:
        list(iter_records(io.BytesIO(data)))
    assert exc.value.offset is not None
    if err is RdbUnsupported:
        assert exc.value.redis_key == b"mykey"


@pytest.mark.parametrize(("body", "message"), [
    (b"\xf6" + s(b"x"), "0xf6 .*not supported"),
    (b"\xf7\x01", "MODULE_AUX.*not supported"),
    (b"\xf4\x01", "unknown RDB opcode 0xf4 at offset 9"),
])
def test_refused_opcodes(body: bytes, message: str) -> None:
    with pytest.raises(RdbError, match=message):
        list(iter_records(io.BytesIO(rdb(body))))


def test_header_checks() -> None:
    with pytest.raises(RdbUnsupported, match="version 12 is newer than supported"):
        list(iter_records(io.BytesIO(rdb(b"", version=12))))
    with pytest.raises(RdbUnsupported, match="version 12"):
        validate(rdb(b"", version=12))
    with pytest.raises(RdbError, match="not an RDB file"):
        list(iter_records(io.BytesIO(b"REDIX0010" + bytes(20))))
    with pytest.raises(RdbError, match="not an RDB file"):
        validate(b"GARBAGE!!" + bytes(20))
    assert RdbUnsupported.exit_code != RdbError.exit_code


def test_unchecksummed_and_old_versions() -> None:
    data = rdb(SENTINEL, checksum=False)
    reader = validate(data)
    assert (reader.version, reader.checksummed, reader.crc, reader.size) == (10, False, 0, len(data))
    parser = RdbParser(io.BytesIO(data))
    assert len([r for r in parser if isinstance(r, Entry)]) == 1 and not parser.checksummed
    old = rdb(SENTINEL, version=4)
    assert old.endswith(b"\xff")
    reader = validate(old)
    assert (reader.version, reader.checksummed) == (4, False)
    assert [e.key for e in entries(old)] == [b"after"]
    with pytest.raises(RdbError, match="EOF opcode"):
        validate(old[:-1] + b"\x00")


def test_validating_reader_checks_length_and_passes_through() -> None:
    reader = validate(SAMPLE, read_size=1)
    assert (reader.version, reader.size, reader.checksummed) == (10, len(SAMPLE), True)
    assert reader.crc == int.from_bytes(SAMPLE[-8:], "little")
    validate(SAMPLE, expected_size=len(SAMPLE))
    with pytest.raises(RdbError, match="differs from the expected"):
        validate(SAMPLE, expected_size=len(SAMPLE) + 1)
    with pytest.raises(RdbError, match="EOF opcode"):
        validate(SAMPLE[:-9] + b"\x00" + SAMPLE[-8:])

    class ReadOnly:  # no readinto
        def __init__(self, data: bytes) -> None:
            self.f = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self.f.read(min(n, 4))

    reader = ValidatingReader(ReadOnly(SAMPLE))  # type: ignore[arg-type]
    assert reader.readall() == SAMPLE and reader.checksummed
    assert io.BufferedReader(ValidatingReader(io.BytesIO(SAMPLE))).read() == SAMPLE


def test_trailing_data_is_refused() -> None:
    with pytest.raises(RdbError, match="unexpected data after the RDB end"):
        list(iter_records(io.BytesIO(SAMPLE + b"x")))


# -- restore payload and rewrite -------------------------------------------------------------


def test_restore_payload_layout() -> None:
    e = Entry(0, b"k", 0, s(b"hello"), None, None, None, 0)
    payload = restore_payload(e, 10)
    assert payload[:-10] == b"\x00\x05hello" and payload[-10:-8] == b"\x0a\x00"
    assert int.from_bytes(payload[-8:], "little") == crc64(payload[:-8])
    with pytest.raises(ValueError, match="no value"):
        restore_payload(Entry(0, b"k", 0, b"", None, None, None, 0), 10)


def test_rewrite_drops_and_shifts() -> None:
    at, now = 2_000_000, 5_000_000
    body = (b"\xfa" + s(b"redis-ver") + s(b"7.0.15") + b"\xf5" + s(b"lib") + b"\xfe\x00\xfb\x04\x03"
            + key(0, b"gone", s(b"v"), b"\xfc" + struct.pack("<Q", at))
            + key(0, b"kept", s(b"v"), b"\xfc" + struct.pack("<Q", at + 1))
            + key(0, b"secs", s(b"v"), b"\xf8\x05\xfd" + struct.pack("<I", 3000))
            + key(0, b"plain", s(b"v"), b"\xf9\x02")
            + b"\xfe\x03" + key(0, b"db3", s(b"v")))
    src = rdb(body)
    out = io.BytesIO()
    stats = rewrite(io.BytesIO(src), out, at_ms=at, now_ms=now)
    assert (stats.keys_kept, stats.keys_expired, stats.keys_with_ttl) == (4, 1, 2)
    assert (stats.bytes_in, stats.bytes_out) == (len(src), len(out.getvalue()))
    recs = list(iter_records(io.BytesIO(out.getvalue())))  # valid CRC, parses
    got = {r.key: r for r in recs if isinstance(r, Entry)}
    assert set(got) == {b"kept", b"secs", b"plain", b"db3"}
    assert got[b"kept"].expire_ms == at + 1 + (now - at)
    assert (got[b"secs"].expire_ms, got[b"secs"].lru_idle) == (3_000_000 + now - at, 5)
    assert (got[b"plain"].lfu_freq, got[b"db3"].db) == (2, 3)
    assert [r for r in recs if isinstance(r, Aux)] == [Aux(b"redis-ver", b"7.0.15", 9)]
    assert any(isinstance(r, Function) for r in recs)
    for chunk in (1, 2, 5, 13, 64):  # window moves at every possible place
        again = io.BytesIO()
        assert rewrite(io.BytesIO(src), again, at_ms=at, now_ms=now, chunk_size=chunk) == stats
        assert again.getvalue() == out.getvalue()
    # Nothing expired and no shift: the output is byte-identical.
    for chunk in (1, 7, 1 << 20):
        same = io.BytesIO()
        rewrite(io.BytesIO(SAMPLE), same, at_ms=0, now_ms=0, chunk_size=chunk)
        assert same.getvalue() == SAMPLE


def test_rewrite_refuses_corrupt_input() -> None:
    bad = SAMPLE[:20] + bytes([SAMPLE[20] ^ 0x40]) + SAMPLE[21:]
    with pytest.raises(RdbError):
        rewrite(io.BytesIO(bad), io.BytesIO(), at_ms=0, now_ms=0)


# -- native fast path of rewrite(): byte-identical to the Python path ------------------------
#
# Without the extension (a build without a C compiler) these tests still run, over the Python
# path alone; DRKIT_REQUIRE_NATIVE=1 makes test_native_extension_is_built insist on it.

NATIVE = native_available()


def run_rewrite(data: bytes, native: bool, cuts: list[int] | None = None, **kw) -> tuple[bytes, object]:
    """(output, stats) of rewrite(), or (partial output, (exception class, message, offset, key)).

    With ``cuts``, the input goes in as pieces cut there, through a ChunkStream (as the restore
    feeds the repository's chunks)."""
    out = io.BytesIO()
    src = io.BytesIO(data) if cuts is None else ChunkStream(iter(_pieces(data, cuts)))
    try:
        stats = rewrite(src, out, native=native, **kw)
    except (RdbError, struct.error) as exc:
        return out.getvalue(), (type(exc), str(exc), getattr(exc, "offset", None), getattr(exc, "redis_key", None))
    return out.getvalue(), stats


def same_both_ways(data: bytes, **kw) -> tuple[bytes, object]:
    """rewrite() ``data`` with the Python path and (when built) the native one: same bytes, same outcome.

    On an error the output is partial (the restore discards it); the two paths may have written
    different amounts by then, but both only ever wrote a prefix of the same rewritten stream.
    """
    want = run_rewrite(data, False, **kw)
    if NATIVE:
        got = run_rewrite(data, True, **kw)
        assert got[1] == want[1]
        if isinstance(want[1], tuple):
            assert got[0].startswith(want[0]) or want[0].startswith(got[0])
        else:
            assert got[0] == want[0]
    return want


def test_native_extension_is_built() -> None:
    if os.environ.get("DRKIT_REQUIRE_NATIVE") == "1":
        assert NATIVE, "DRKIT_REQUIRE_NATIVE=1 but drkit.dumpers.redis._rdbscan is not built (pip install -e .)"
    if NATIVE:
        assert rewrite(io.BytesIO(SAMPLE), io.BytesIO(), at_ms=0, now_ms=0, native=True).keys_kept == 11
    else:
        with pytest.raises(RuntimeError, match="not built"):
            rewrite(io.BytesIO(SAMPLE), io.BytesIO(), at_ms=0, now_ms=0, native=True)


def test_native_can_be_refused_or_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rdb_mod, "_rdbscan", None)
    with pytest.raises(RuntimeError, match="not built"):
        rewrite(io.BytesIO(SAMPLE), io.BytesIO(), at_ms=0, now_ms=0, native=True)
    out = io.BytesIO()
    rewrite(io.BytesIO(SAMPLE), out, at_ms=0, now_ms=0)  # default: falls back to Python
    assert out.getvalue() == SAMPLE
    assert not rdb_mod._use_native(None, 0, 0)
    monkeypatch.undo()
    monkeypatch.setenv("DRKIT_RDB_NATIVE", "0")
    assert not rdb_mod._use_native(None, 0, 0)
    assert not rdb_mod._use_native(False, 0, 0)
    if NATIVE:
        assert rdb_mod._use_native(True, 0, 0)
        assert not rdb_mod._use_native(True, 1 << 63, 0)  # beyond int64: the Python path


AT, NOW = 1_700_000_000_000, 1_700_000_500_000
PREFIX_OPS = [b"\xfc", b"\xfd", b"\xf8", b"\xf9"]


def prefix_bytes(ops: tuple[bytes, ...], exp_ms: int, idle: int = 300, freq: int = 7) -> bytes:
    out = b""
    for op in ops:
        if op == b"\xfc":
            out += op + struct.pack("<Q", exp_ms)
        elif op == b"\xfd":
            out += op + struct.pack("<i", exp_ms // 1000)
        elif op == b"\xf8":
            out += op + enc_len(idle)
        else:
            out += op + bytes([freq])
    return out


def test_native_every_prefix_combination() -> None:
    """Every ordered choice of EXPIRETIME_MS / EXPIRETIME / IDLE / FREQ, with expiries dropped, at the
    edge and kept, on every value layout; then in one file with windows cut everywhere."""
    combos = [c for k in range(5) for c in itertools.permutations(PREFIX_OPS, k)]
    combos += [(b"\xfc", b"\xfc"), (b"\xfd", b"\xfc"), (b"\xf8", b"\xf8", b"\xf9", b"\xf9")]
    assert len(combos) == 65 + 3
    body = b"\xfa" + s(b"redis-ver") + s(b"7.2.4") + b"\xfe\x00\xfb\x40\x80\x10"
    i = 0
    for combo in combos:
        for exp in (AT - 5000, AT, AT + 1000, AT + 86_400_000):
            t, v = VALUES[i % len(VALUES)]
            body += key(t, b"key%d" % i, v, prefix_bytes(combo, exp, idle=i * 37 % 20000, freq=i % 256))
            i += 1
    data = rdb(body + SENTINEL)
    out, stats = same_both_ways(data, at_ms=AT, now_ms=NOW)
    assert stats.keys_expired > 0 and stats.keys_with_ttl > 0 and stats.keys_kept + stats.keys_expired == i + 1
    kept = {e.key: e for e in entries(out)}
    for e in entries(data):
        if e.expire_ms is not None and e.expire_ms <= AT:
            assert e.key not in kept
        else:
            got = kept[e.key]
            assert (got.expire_ms, got.lru_idle, got.lfu_freq, got.value) == (
                None if e.expire_ms is None else e.expire_ms + NOW - AT, e.lru_idle, e.lfu_freq, e.value)
    for chunk in (1, 3, 8, 64, 1000):
        assert same_both_ways(data, at_ms=AT, now_ms=NOW, chunk_size=chunk) == (out, stats)


def big_values() -> list[tuple[int, bytes]]:
    many = [b"e%d" % i for i in range(3000)]
    return [
        (0, s(b"x" * 100_000)),
        (0, b"\x81" + (5000).to_bytes(8, "big") + b"y" * 5000),
        (0, lzf_str(b"\x1f" + b"z" * 32, 32) * 1),
        (1, enc_len(3000) + b"".join(s(m) for m in many)),
        (2, enc_len(3000) + b"".join(s(m) for m in many)),
        (4, enc_len(1500) + b"".join(s(m) for m in many)),
        (3, enc_len(3000) + b"".join(s(m) + b"\x031.5" for m in many)),
        (5, enc_len(3000) + b"".join(s(m) + struct.pack("<d", 2.5) for m in many)),
        (14, enc_len(3) + s(b"q" * 70_000) + s(b"r" * 300) + s(b"s")),
        (18, enc_len(2) + enc_len(2) + s(b"lp" * 40_000) + enc_len(1) + s(b"lp2")),
        (16, s(b"h" * 20_000)),
    ]


def test_native_large_values_span_windows() -> None:
    body = b"\xfe\x00"
    for i, (t, v) in enumerate(big_values()):
        exp = (AT - 1, AT + 1, None)[i % 3]
        pre = b"" if exp is None else b"\xfc" + struct.pack("<Q", exp)
        body += key(t, b"big%d" % i, v, pre) + key(0, b"small%d" % i, s(b"v"), b"\xf9\x01")
    data = rdb(body)
    want = same_both_ways(data, at_ms=AT, now_ms=NOW)
    assert want[1].keys_expired == 4
    for chunk in (1, 100, 4096, 65536):
        assert same_both_ways(data, at_ms=AT, now_ms=NOW, chunk_size=chunk) == want


def test_native_keys_of_every_encoding() -> None:
    """Int-encoded and LZF keys (good and corrupt), 14-bit and 32-bit key lengths."""
    lzf_key = lzf_str(b"\x02abc\x80\x02", 9)
    keys = [b"\xc0\xfb", b"\xc1\xe8\x03", b"\xc2\xa0\x86\x01\x00", lzf_key, enc_len(100) + b"k" * 100,
            b"\x80" + (3).to_bytes(4, "big") + b"abc", b"\x81" + (2).to_bytes(8, "big") + b"ab"]
    body = b"\xfe\x00" + b"".join(b"\xfc" + struct.pack("<Q", AT + i) + b"\x00" + k + s(b"v")
                                  for i, k in enumerate(keys))
    out, stats = same_both_ways(rdb(body), at_ms=AT, now_ms=NOW)
    assert stats.keys_kept == len(keys) - 1 and stats.keys_expired == 1
    bad_lzf = [lzf_str(b"\x02abc\x80\x02", 10), lzf_str(b"\x02abc\x80", 9), lzf_str(b"\x02abc\x80\x09", 9),
               lzf_str(b"\x05ab", 3), lzf_str(b"\xe0", 2), lzf_str(b"\x00a\x20\x01", 4), b"\xc4xx", b"\xc0"]
    for k in bad_lzf:
        for ck in (True, False):
            data = rdb(b"\xfe\x00" + key(0, b"a", s(b"1")) + b"\x00" + k + s(b"v") + SENTINEL, checksum=ck)
            for chunk in (4, 1 << 20):
                assert isinstance(same_both_ways(data, at_ms=AT, now_ms=NOW, chunk_size=chunk)[1], tuple)
    # The decoder takes a literal run cut short by the end of the data as it is (2 of 6 bytes here).
    data = rdb(b"\xfe\x00" + b"\x00" + lzf_str(b"\x05ab", 2) + s(b"v") + SENTINEL)
    assert [e.key for e in entries(same_both_ways(data, at_ms=AT, now_ms=NOW)[0])] == [b"ab", b"after"]


def test_native_truncation_at_every_offset() -> None:
    body = b"\xfe\x00" + b"".join(key(t, b"k%d" % i, v, prefix_bytes(PREFIX_OPS[: i % 5], AT + 1000 * (i % 3 - 1)))
                                  for i, (t, v) in enumerate(VALUES))
    data = rdb(body)
    for cut in range(len(data)):
        for chunk in (5, 1 << 20):
            _, err = same_both_ways(data[:cut], at_ms=AT, now_ms=NOW, chunk_size=chunk)
            assert isinstance(err, tuple) and issubclass(err[0], RdbError), (cut, err)


def test_native_corruption_matches_python() -> None:
    """Every single-byte change: the same error (class, message, offset), or the same output when
    the file is not checksummed and the change leaves it well-formed."""
    body = b"\xfe\x00" + b"".join(key(t, b"k%d" % i, v, prefix_bytes(PREFIX_OPS[: i % 5], AT + 1000 * (i % 3 - 1)))
                                  for i, (t, v) in enumerate(VALUES[:14]))
    for ck in (True, False):
        data = rdb(body, checksum=ck)
        for pos in range(9, len(data) - (8 if ck else 0)):
            for mask in (0x01, 0x40, 0x80, 0xFF):
                bad = data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1:]
                _, res = same_both_ways(bad, at_ms=AT, now_ms=NOW, chunk_size=16)
                if ck:
                    assert isinstance(res, tuple)


def test_native_expiry_edges() -> None:
    """Expiries whose shifted value leaves 0..2**64-1 (struct.error, as in the Python path), beyond
    int64, in seconds before 1970, and shifts backwards."""
    huge = b"\xfc" + struct.pack("<Q", 2**64 - 1)
    cases = [(key(0, b"h", s(b"v"), huge), AT, NOW), (key(0, b"h", s(b"v"), huge), AT, AT - 5),
             (key(0, b"big", s(b"v"), b"\xfc" + struct.pack("<Q", 2**63 + 5)), AT, AT - 10),
             (key(0, b"neg", s(b"v"), b"\xfd" + struct.pack("<i", -5)), -10_000, 0),
             (key(0, b"neg", s(b"v"), b"\xfd" + struct.pack("<i", -5)), -10_000, -20_000),
             (key(0, b"past", s(b"v"), b"\xfc" + struct.pack("<Q", AT + 1)), AT, 0),
             (key(0, b"edge", s(b"v"), b"\xfc" + struct.pack("<Q", 2**63 - 1)), 0, 1),
             (key(0, b"edge", s(b"v"), b"\xfc" + struct.pack("<Q", 2**63 - 1)), -1, 0),
             (key(0, b"edge", s(b"v"), b"\xfc" + struct.pack("<Q", 2**63 - 1)), 2**63 - 2, 2**63 - 1),
             (key(0, b"k", s(b"v"), b"\xfc" + struct.pack("<Q", 10)), -(2**63), 2**63 - 1),
             (key(0, b"k", s(b"v"), b"\xfc" + struct.pack("<Q", 10)), 2**70, 2**71)]
    for rec, at, now in cases:
        data = rdb(b"\xfe\x00" + key(0, b"a", s(b"1")) + rec + SENTINEL)
        same_both_ways(data, at_ms=at, now_ms=now)


def test_native_scan_argument_checks() -> None:
    if not NATIVE:
        return
    assert rdb_mod._rdbscan.ABI == rdb_mod._ABI  # type: ignore[union-attr]  # else rdb.py would not use it
    scan = rdb_mod._rdbscan.scan  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        scan(b"abc", 4, 0, bytearray(), 0, 0, 0)
    with pytest.raises(ValueError):
        scan(b"abc", 1, 2, bytearray(), 0, 0, 0)
    with pytest.raises(ValueError):
        scan(b"abc", 0, 0, bytearray(4), 5, 0, 0)  # used beyond the buffer
    with pytest.raises(BufferError):
        scan(b"abc", 0, 0, b"", 0, 0, 0)  # not writable
    with pytest.raises(TypeError):
        scan(b"abc", 0, 0, bytearray())
    assert scan(b"", 0, 0, bytearray(), 0, 0, 0) == (~0, 0, 0, 0, 0, 0, 0)
    # The scanner itself takes every key record of the handled types, whatever its prefixes (so a
    # change that made it give up early, still byte-identical, would be noticed here).
    handled = [(t, v) for t, v in VALUES if t not in (15, 19, 21)]
    combos = [c for k in range(5) for c in itertools.permutations(PREFIX_OPS, k)]
    body = b"".join(key(t, b"k%d" % i, v, prefix_bytes(combos[i % len(combos)], AT + 1000 * (i % 3 - 1)))
                    for i, (t, v) in enumerate(handled * 4))
    data = rdb(body)
    out = bytearray(len(data) * 2)
    nxt, run, kept, expired, with_ttl, used, full = scan(data, 9, 0, out, 0, AT, NOW - AT)
    assert nxt == len(data) - 9 and data[nxt] == 0xFF and not full  # stopped at EOF, not before
    assert kept + expired == len(handled) * 4 and expired > 0 and with_ttl > 0
    want, stats = run_rewrite(data, False, at_ms=AT, now_ms=NOW)
    assert bytes(out[:used]) + data[run:nxt] == want[:nxt + len(want) - len(data)]
    assert (stats.keys_kept, stats.keys_expired, stats.keys_with_ttl) == (kept, expired, with_ttl)
    assert scan(data[:40], 9, 0, bytearray(100), 0, AT, 0)[0] < 0  # an incomplete record
    assert scan(b"\xfe\x00", 0, 0, bytearray(), 0, 0, 0) == (0, 0, 0, 0, 0, 0, 0)  # SELECTDB: not handled
    # A buffer too small for the next copy: it stops at that key, says so, and has not touched
    # the bytes after what it reports as used.
    small = bytearray(b"\xee" * 64)
    nxt, run, kept, expired, with_ttl, used, full = scan(data, 9, 0, small, 10, AT, NOW - AT)
    assert full and used <= 64 and small[used:] == b"\xee" * (64 - used) and 9 <= run <= nxt < len(data) - 9


def test_rewrite_through_a_small_output_buffer_is_unchanged(monkeypatch) -> None:
    """The fixed output buffer fills up (the scanner's full=1 path, and records larger than the
    whole buffer, which the Python path writes straight through): the output is the same."""
    body = b"".join(key(0, b"k%d" % i, s(b"v" * (i % 7 * 40)),
                        prefix_bytes((b"\xfc",) if i % 4 else (), AT + 1000 * (i % 3 - 1)))
                    for i in range(300))
    body += key(0, b"big", s(b"x" * 5000), prefix_bytes((b"\xfc",), AT + 1000))
    data = rdb(body)
    want, stats = run_rewrite(data, False, at_ms=AT, now_ms=NOW)
    assert stats.keys_expired > 100 and stats.keys_with_ttl > 50
    monkeypatch.setattr(rdb_mod, "_BUF", 512)
    monkeypatch.setattr(rdb_mod, "_OUT", 256)
    got, _ = run_rewrite(data, False, at_ms=AT, now_ms=NOW)
    assert got == want
    if NATIVE:
        real, fulls = rdb_mod._rdbscan.scan, []  # type: ignore[union-attr]

        def counting(*args):
            res = real(*args)
            fulls.append(res[-1])
            return res

        monkeypatch.setattr(rdb_mod, "_rdbscan", types.SimpleNamespace(scan=counting))
        got, _ = run_rewrite(data, True, at_ms=AT, now_ms=NOW)
        assert got == want
        assert sum(fulls) > 10  # the full path was taken, often


OTHER_RECORDS = [b"\xfa" + s(b"aux") + s(b"val"), b"\xfe\x01", b"\xfe\x00", b"\xfb\x05\x02",
                 b"\xf5" + s(b"#!lua name=x\n")]


@st.composite
def rdb_files(draw: st.DrawFn) -> bytes:
    body = b""
    for i in range(draw(st.integers(0, 25))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            body += draw(st.sampled_from(OTHER_RECORDS))
            continue
        t, v = draw(st.sampled_from(VALUES + big_values()[-3:]))
        ops = draw(st.lists(st.sampled_from(PREFIX_OPS), max_size=4))
        exp = AT + draw(st.sampled_from([-86_400_000, -1000, -1, 0, 1, 999, 1000, 3_600_000]))
        name = draw(st.sampled_from([b"k%d" % i, b"x" * 70, b"k"]))
        body += key(t, name, v, prefix_bytes(tuple(ops), exp, idle=draw(st.integers(0, 2**32 - 1)),
                                             freq=draw(st.integers(0, 255))))
    return rdb(body, version=draw(st.sampled_from([9, 10, 11])), checksum=draw(st.booleans()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rdb_files(), st.sampled_from([1, 7, 64, 4096, 1 << 22]), st.integers(-3, 3),
       st.data())
def test_native_matches_python_on_random_files(data: bytes, chunk: int, shift_s: int, extra: st.DataObject) -> None:
    out, stats = same_both_ways(data, at_ms=AT, now_ms=AT + shift_s * 1000, chunk_size=chunk)
    assert not isinstance(stats, tuple)
    assert len(out) == stats.bytes_out
    list(iter_records(io.BytesIO(out)))  # a valid RDB
    cut = extra.draw(st.integers(0, len(data)))
    flip = extra.draw(st.integers(0, len(data) - 1))
    same_both_ways(data[:cut], at_ms=AT, now_ms=NOW, chunk_size=chunk)
    same_both_ways(data[:flip] + bytes([data[flip] ^ extra.draw(st.integers(1, 255))]) + data[flip + 1:],
                   at_ms=AT, now_ms=NOW, chunk_size=chunk)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c for c in cuts if 0 < c < len(data))})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


class _Recorder(io.BytesIO):
    """A dst that remembers the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, b) -> int:  # type: ignore[override]
        self.sizes.append(len(b))
        return super().write(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def _damaged(data: bytes, extra: st.DataObject) -> tuple[bytes, bytes, bytes]:
    """``data``, a truncation of it and a copy with one byte changed, as hypothesis draws them."""
    cut = extra.draw(st.integers(0, len(data)))
    flip = extra.draw(st.integers(0, len(data) - 1))
    flipped = data[:flip] + bytes([data[flip] ^ extra.draw(st.integers(1, 255))]) + data[flip + 1:]
    return data, data[:cut], flipped


def _assert_same_outcome(got: tuple[bytes, object], want: tuple[bytes, object]) -> None:
    """Same stats, or the same error; on an error both outputs are prefixes of one stream."""
    assert got[1] == want[1]
    if isinstance(want[1], tuple):
        assert got[0].startswith(want[0]) or want[0].startswith(got[0])
    else:
        assert got[0] == want[0]


@given(rdb_files(), st.booleans(), st.booleans(), st.sampled_from([1, 5, 64, 65536]), st.data())
def test_chunk_stream_input_gives_the_same_output(data: bytes, native: bool, verify: bool, bridge: int,
                                                  extra: st.DataObject) -> None:
    """The restore feeds the repository's chunks straight in, bridging records that straddle two
    pieces: however the stream is cut and whatever the bridge size, output and errors are those
    of reading the file (both paths, CRC checked or not), for good, truncated, corrupted input and
    input with trailing bytes."""
    native = native and NATIVE
    old = rdb_mod._BRIDGE
    rdb_mod._BRIDGE = bridge
    try:
        for case in (*_damaged(data, extra), data + b"\0" * extra.draw(st.integers(1, 9))):
            cuts = extra.draw(st.lists(st.integers(0, len(case)), max_size=12))
            want = run_rewrite(case, native, at_ms=AT, now_ms=NOW, verify_crc=verify)
            got = run_rewrite(case, native, cuts, at_ms=AT, now_ms=NOW, verify_crc=verify)
            _assert_same_outcome(got, want)
    finally:
        rdb_mod._BRIDGE = old


@given(rdb_files(), st.booleans(), st.sampled_from([16, 64, 512]), st.data())
def test_a_small_output_buffer_gives_the_same_output(data: bytes, native: bool, buf: int,
                                                     extra: st.DataObject) -> None:
    """The output buffer fills up constantly (the C scanner's full=1 return, records larger than
    the whole buffer), with the input cut into pieces: output and errors are those of the Python
    path with the normal buffer, for good, truncated and corrupted input."""
    native = native and NATIVE
    old = rdb_mod._BUF, rdb_mod._OUT
    try:
        for case in _damaged(data, extra):
            cuts = extra.draw(st.lists(st.integers(0, len(case)), max_size=8))
            rdb_mod._BUF, rdb_mod._OUT = old
            want = run_rewrite(case, False, at_ms=AT, now_ms=NOW)
            rdb_mod._BUF, rdb_mod._OUT = buf, buf // 2
            got = run_rewrite(case, native, cuts, at_ms=AT, now_ms=NOW)
            _assert_same_outcome(got, want)
    finally:
        rdb_mod._BUF, rdb_mod._OUT = old


def test_chunk_stream_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases found in review: the end of the RDB inside a bridge whose piece goes on (trailing
    bytes), the same bytes object handed over twice, a key cut by a piece bound before an
    unsupported type."""
    monkeypatch.setattr(rdb_mod, "_BRIDGE", 4)
    data = rdb(b"\xfe\x00" + key(0, b"a", s(b"1"))) + b"JUNK" * 10
    x = key(0, b"k", s(b"v"))
    twice = rdb(b"\xfe\x00" + x + x + SENTINEL)
    unsupported = rdb(b"\xfe\x00" + key(25, b"k5", b"\x01\x02\x03"))
    for native in {False, NATIVE}:
        for case, pieces in ((data, _pieces(data, [len(data) - 46])),
                             (twice, [twice[:11], x, x, twice[11 + 2 * len(x):]]),
                             (unsupported, _pieces(unsupported, [13]))):
            assert b"".join(pieces) == case
            out = io.BytesIO()
            try:
                got: object = rewrite(ChunkStream(iter(pieces)), out, native=native, at_ms=AT, now_ms=NOW)
            except RdbError as exc:
                got = (type(exc), str(exc))
            want = run_rewrite(case, native, at_ms=AT, now_ms=NOW)[1]
            assert got == (want if not isinstance(want, tuple) else want[:2])
            if not isinstance(want, tuple):
                assert out.getvalue() == run_rewrite(case, native, at_ms=AT, now_ms=NOW)[0]


def test_a_value_over_many_pieces_is_copied_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16 MiB value in 64 KiB pieces: the window at least doubles on each refill, so the bytes
    of all the windows built stay a small multiple of the file (one piece at a time would be
    quadratic: ~2 GB here)."""
    data = rdb(b"\xfe\x00" + key(0, b"big", s(os.urandom(16 << 20))) + SENTINEL)
    built = [0]
    real = rdb_mod.RdbParser._refill

    def counting(self, keep: int) -> int:
        r = real(self, keep)
        built[0] += len(self._b)
        return r

    monkeypatch.setattr(rdb_mod.RdbParser, "_refill", counting)
    for native in {False, NATIVE}:
        built[0] = 0
        out = io.BytesIO()
        rewrite(ChunkStream(iter(_pieces(data, list(range(0, len(data), 64 << 10))))), out, native=native,
                at_ms=AT, now_ms=NOW)
        assert out.getvalue() == data
        assert built[0] < 5 * len(data), built[0]


def test_large_rdb_is_written_in_pieces_of_at_most_1_mib() -> None:
    body = b"\xfe\x00" + b"".join(key(0, b"k%d" % i, s(os.urandom(300_000)), b"\xfc" + struct.pack("<Q", AT + 5))
                                  for i in range(12))
    body += key(0, b"plain", s(b"p" * 3_000_000))
    data = rdb(body)
    for native in {False, NATIVE}:
        dst = _Recorder()
        stats = rewrite(ChunkStream(iter(_pieces(data, list(range(0, len(data), 1_100_000))))), dst,
                        at_ms=AT, now_ms=NOW, native=native)
        assert stats.keys_with_ttl == 12 and stats.bytes_out == len(dst.getvalue())
        assert max(dst.sizes) <= 1 << 20
        list(iter_records(io.BytesIO(dst.getvalue())))  # a valid RDB, CRC included


def test_verify_crc_false_skips_only_the_checksum() -> None:
    good = rdb(b"\xfe\x00" + key(0, b"a", s(b"1"), b"\xfc" + struct.pack("<Q", AT + 1)) + SENTINEL)
    bad_crc = good[:-8] + bytes(8 * [0x5A])
    with pytest.raises(RdbError, match="checksum mismatch"):
        rewrite(io.BytesIO(bad_crc), io.BytesIO(), at_ms=AT, now_ms=NOW)
    for native in {False, NATIVE}:
        want, got = io.BytesIO(), io.BytesIO()
        rewrite(io.BytesIO(good), want, at_ms=AT, now_ms=NOW, native=native)
        rewrite(io.BytesIO(bad_crc), got, at_ms=AT, now_ms=NOW, native=native, verify_crc=False)
        assert got.getvalue() == want.getvalue()  # a fresh, correct CRC64 on the output
        # Structure is still checked in full: truncation, a bad type, trailing bytes.
        for broken in (good[:-12], good[:9] + b"\xfe\x00\x63" + good[12:], good + b"x"):
            with pytest.raises(RdbError):
                rewrite(io.BytesIO(broken), io.BytesIO(), at_ms=AT, now_ms=NOW, native=native, verify_crc=False)
