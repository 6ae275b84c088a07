"""Pure-logic tests of drkit.dumpers.redis.rdb over small hand-built RDB files."""

from __future__ import annotations

import io
import struct

import pytest

from drkit.dumpers.redis import rdb_types
from drkit.dumpers.redis.rdb import (
    Aux,
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
