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


def _incr(tmp_path, name: str, data: bytes, seq: int):
    from drkit.dumpers.redis.aof import AofFile

    path = tmp_path / name
    path.write_bytes(data)
    return AofFile(name, seq, "i"), open(path, "rb"), 0, len(data)  # noqa: SIM115 - Pieces closes it


def test_an_incr_file_without_its_own_ts_inherits_the_annotation_in_effect(tmp_path):
    """Redis 7 writes #TS only when its second is later than the last one it wrote; the INCR
    file a rewrite opens in that same second starts with commands that carry none."""
    from drkit.dumpers.redis.aoffiles import Pieces

    old = b"#TS:1700000005\r\n" + encode_command([b"SET", b"a", b"1"])
    new = (encode_command([b"SELECT", b"0"]) + encode_command([b"SET", b"b", b"2"]) + b"#TS:1700000006\r\n"
           + encode_command([b"SET", b"c", b"3"]))
    # Across a rewrite inside one piece: the second carries over into the new file.
    r = Pieces([_incr(tmp_path, "a.1.incr.aof", old, 1), _incr(tmp_path, "a.2.incr.aof", new, 2)], None)
    shipped = r.read()
    r.close()
    assert shipped == old + new and r.commands == 4 and r.untimed == 0
    assert (r.first_command_ts, r.first_ts, r.ts) == (1700000005, 1700000005, 1700000006)
    # A piece that starts with the new file (a chain's first piece, or the previous piece ended
    # in the old file): its headless commands belong to the inherited second, not the next one.
    r = Pieces([_incr(tmp_path, "a.2.incr.aof", new, 2)], 1700000005)
    assert r.read() == new
    r.close()
    assert (r.untimed, r.first_command_ts, r.first_ts, r.ts) == (2, 1700000005, 1700000006, 1700000006)
    got = list(iter_aof(io.BytesIO(new), "p", second_end_ms(1700000005)))
    assert [t for t, _ in got] == [second_end_ms(1700000005)] * 2 + [second_end_ms(1700000006)]
    # Without an inherited second the scanner does not borrow the next file's annotation.
    r = Pieces([_incr(tmp_path, "a.2.incr.aof", new, 2), _incr(tmp_path, "a.3.incr.aof", old, 3)], None)
    r.read()
    r.close()
    assert (r.untimed, r.first_command_ts, r.first_ts) == (2, None, 1700000006)


def _manifest(mid: str, kind: str, meta: dict):
    from drkit.repository import Manifest

    return Manifest(id=mid, source="cache", datastore="redis", type=kind, started="2023-11-14T22:13:20Z",
                    finished="2023-11-14T22:13:21Z", streams=[], metadata=meta)


def test_the_inherited_second_is_the_previous_pieces_last_or_the_base_ctime():
    from drkit.dumpers.redis.aofbackup import _ChainState

    base = _manifest("b", "full", {"method": "aof-rewrite", "chain": "C", "rdb_ctime": 1700000005,
                                   "snapshot_time": "2023-11-14T22:13:25.999Z"})
    assert _ChainState(base, None).inherited == (1700000005, "base")
    inc = _manifest("i1", "incremental", {"end_offset": 10, "ts_at_end_ms": second_end_ms(1700000042)})
    assert _ChainState(base, inc).inherited == (1700000042, "i1")
    # An old empty piece (no annotation seen, none inherited): back to the base.
    old = _manifest("i0", "incremental", {"end_offset": 0, "ts_at_end_ms": None})
    assert _ChainState(base, old).inherited == (1700000005, "base")
    # An old base without rdb_ctime: the second of its snapshot time.
    legacy = _manifest("b0", "full", {"method": "aof-rewrite", "chain": "C",
                                      "snapshot_time": "2023-11-14T22:13:25.999Z"})
    assert _ChainState(legacy, None).inherited == (1700000005, "base")
