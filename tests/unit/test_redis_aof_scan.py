"""The AOF manifest parser, the structural scanner and the timed command iterator (pure logic)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drkit.dumpers.redis.aof import AofScanner, iter_aof, parse_manifest, second_end_ms
from drkit.dumpers.redis.stream import encode_command
from drkit.errors import IntegrityError

AOF = (b"#TS:1700000000\r\n" + encode_command([b"SELECT", b"0"]) + encode_command([b"SET", b"a", b"1"])
       + encode_command([b"SET", b"b", b"x" * 300]) + b"#TS:1700000002\r\n"
       + encode_command([b"INCR", b"c"]) + encode_command([b"DEL", b"a"]))


def test_manifest_parses_quoted_names_and_orders_incr_files():
    m = parse_manifest('file appendonly.aof.3.base.rdb seq 3 type b\n'
                       'file "my aof.5.incr.aof" seq 5 type i\n'
                       'file appendonly.aof.4.incr.aof seq 4 type i\n'
                       'file appendonly.aof.2.incr.aof seq 2 type h\n', "m")
    assert m.base is not None and m.base.name == "appendonly.aof.3.base.rdb"
    assert [(f.name, f.seq) for f in m.incrs] == [("appendonly.aof.4.incr.aof", 4), ("my aof.5.incr.aof", 5)]
    assert m.incr(5) is not None and m.incr(2) is None


def test_manifest_garbage_is_named():
    with pytest.raises(IntegrityError, match=r"where line 2"):
        parse_manifest("file a seq 1 type b\nthis is not a manifest\n", "where")


@given(st.lists(st.integers(min_value=1, max_value=len(AOF)), max_size=8))
def test_scanner_emits_the_same_bytes_however_the_input_is_cut(cuts):
    sc = AofScanner("f")
    out, prev = b"", 0
    for c in sorted(set(cuts)) + [len(AOF)]:
        out += sc.feed(AOF[prev:c])
        prev = c
    assert out == AOF and sc.pending == 0
    assert sc.commands == 5 and (sc.first_ts, sc.last_ts, sc.first_command_ts) == (1700000000, 1700000002, 1700000000)
    assert sc.offset == len(AOF)


def test_scanner_keeps_an_incomplete_command_and_names_garbage_with_its_offset():
    sc = AofScanner("appendonly.aof.7.incr.aof", offset=1000)
    assert sc.feed(AOF[:-5]) == AOF[: AOF.rindex(b"*2\r\n$3\r\nDEL")]
    assert sc.pending > 0
    sc2 = AofScanner("appendonly.aof.7.incr.aof", offset=1000)
    with pytest.raises(IntegrityError, match=r"appendonly.aof.7.incr.aof is corrupt at offset 1016"):
        sc2.feed(AOF[:16] + b"GARBAGE\r\n")
    with pytest.raises(IntegrityError, match="longer than its declared length"):
        AofScanner("f").feed(b"*1\r\n$2\r\nabc\r\n")


def test_iter_aof_times_are_the_end_of_each_second_and_truncation_is_named():
    got = list(iter_aof(io.BytesIO(AOF), "piece-1", None))
    assert [t for t, _ in got] == [second_end_ms(1700000000)] * 3 + [second_end_ms(1700000002)] * 2
    assert got[3][1] == encode_command([b"INCR", b"c"])
    # A piece that starts mid-second inherits the annotation in effect.
    tail = AOF[AOF.index(b"*2\r\n$4\r\nINCR"):]
    assert [t for t, _ in iter_aof(io.BytesIO(tail), "p", 42_999)] == [42_999, 42_999]
    with pytest.raises(IntegrityError, match="piece-2 is truncated"):
        list(iter_aof(io.BytesIO(AOF[:-3]), "piece-2", None))
    with pytest.raises(IntegrityError, match="aof-timestamp-enabled"):
        list(iter_aof(io.BytesIO(tail), "p", None))
