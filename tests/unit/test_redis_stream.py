"""Pure logic of the Redis follower: framing, RESP parsing, time shifts, chain windows."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from drkit.dumpers.redis.chain import build_chains
from drkit.dumpers.redis.stream import (
    command_length,
    encode_command,
    frame,
    iter_frames,
    parse_command,
    shift_times,
)
from drkit.errors import IntegrityError
from drkit.repository.manifest import LogRecord, Manifest, StreamRef


def test_encode_parse_and_length_round_trip():
    cmd = [b"SET", b"k\r\nwith crlf", b"", b"PXAT", b"1700000000000"]
    raw = encode_command(cmd)
    assert parse_command(raw) == cmd
    assert command_length(raw + b"*1\r\n", 0) == len(raw)
    for cut in range(len(raw)):
        assert command_length(raw[:cut], 0) is None
    with pytest.raises(IntegrityError):
        command_length(b"+OK\r\n", 0)


def test_frames_round_trip_and_truncation_is_named():
    data = frame(1, encode_command([b"PING"])) + frame(2, encode_command([b"DEL", b"x"]))
    assert [ts for ts, _ in iter_frames(io.BytesIO(data), "s")] == [1, 2]
    for cut in (3, 15, len(data) - 1):
        with pytest.raises(IntegrityError, match="truncated"):
            list(iter_frames(io.BytesIO(data[:cut]), "s"))


@pytest.mark.parametrize(("args", "expected"), [
    ([b"PEXPIREAT", b"k", b"1000"], [b"PEXPIREAT", b"k", b"1500"]),
    ([b"EXPIREAT", b"k", b"10"], [b"EXPIREAT", b"k", b"10"]),  # 500 ms is less than a second
    ([b"set", b"k", b"v", b"pxat", b"1000"], [b"set", b"k", b"v", b"pxat", b"1500"]),
    ([b"SET", b"k", b"v", b"EXAT", b"10"], [b"SET", b"k", b"v", b"EXAT", b"10"]),
    ([b"GETEX", b"k", b"PXAT", b"7"], [b"GETEX", b"k", b"PXAT", b"507"]),
    ([b"RESTORE", b"k", b"1000", b"payload", b"ABSTTL"], [b"RESTORE", b"k", b"1500", b"payload", b"ABSTTL"]),
    ([b"RESTORE", b"k", b"1000", b"payload"], [b"RESTORE", b"k", b"1000", b"payload"]),  # relative
    ([b"RESTORE", b"k", b"0", b"payload", b"ABSTTL"], [b"RESTORE", b"k", b"0", b"payload", b"ABSTTL"]),
    ([b"SET", b"pxat", b"v"], [b"SET", b"pxat", b"v"]),  # a key named like the flag
    ([b"SET", b"k", b"PXAT", b"EX", b"10"], [b"SET", b"k", b"PXAT", b"EX", b"10"]),  # ... and a value
    ([b"INCR", b"k"], [b"INCR", b"k"]),
])
def test_shift_moves_absolute_expiries_only(args, expected):
    assert shift_times(args, 500) == expected


def test_shift_in_seconds():
    assert shift_times([b"EXPIREAT", b"k", b"10"], 5000) == [b"EXPIREAT", b"k", b"15"]


def _base(offset: int) -> Manifest:
    return Manifest(id="b1", source="c", datastore="redis", type="full", started="", finished="",
                    streams=[], metadata={"chain": "C", "repl_offset": offset,
                                          "snapshot_time": "2026-11-26T10:00:00Z"})


def _slice(start: int, end: int, first: int, last: int, session: int, caught: int | None = None) -> LogRecord:
    return LogRecord(source="c", name=f"C.{start:020d}", stream=StreamRef("x", 0, ""), metadata={
        "chain": "C", "start_offset": start, "end_offset": end, "first_ts_ms": first, "last_ts_ms": last,
        "session": session, "caught_up_ms": caught})


def _ms(s: str) -> int:
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1000)


def test_chain_window_sessions_and_gaps():
    t = _ms
    slices = [
        _slice(100, 200, t("2026-11-26T10:00:01"), t("2026-11-26T10:00:30"), 1, t("2026-11-26T10:00:02")),
        _slice(200, 300, t("2026-11-26T10:00:31"), t("2026-11-26T10:01:00"), 1),
        # reconnect (session 2): its backlog drained at 10:05:00; 10:01:00 .. 10:05:00 is a gap
        _slice(300, 400, t("2026-11-26T10:05:00"), t("2026-11-26T10:06:00"), 2, t("2026-11-26T10:05:00")),
        # a missing slice (400..500) ends the chain
        _slice(500, 600, t("2026-11-26T10:07:00"), t("2026-11-26T10:08:00"), 2),
    ]
    [chain] = build_chains([_base(100)], slices)
    iv = [(a.isoformat(), b.isoformat()) for a, b in chain.intervals]
    assert iv == [
        ("2026-11-26T10:00:00+00:00", "2026-11-26T10:00:00+00:00"),
        ("2026-11-26T10:00:02+00:00", "2026-11-26T10:01:00+00:00"),
        ("2026-11-26T10:05:00+00:00", "2026-11-26T10:06:00+00:00"),
    ]
    assert len(chain.slices) == 3
    assert chain.hole == (400, 500) and [s.name for s in chain.unreached] == [slices[3].name]
    # The same as restore points: the snapshot, one range per session, and the hole as a gap
    # that a latest restore must refuse (the slice past it is committed but unreachable).
    from drkit.catalog import Catalog
    from drkit.dumpers.redis.chain import restore_points

    pts = restore_points(Catalog("c", [_base(100)], slices))
    assert [(p.kind, p.start.isoformat(), p.end.isoformat(), p.logs) for p in pts.points] == [
        ("backup", "2026-11-26T10:00:00+00:00", "2026-11-26T10:00:00+00:00", []),
        ("range", "2026-11-26T10:00:02+00:00", "2026-11-26T10:01:00+00:00", [slices[0].name, slices[1].name]),
        ("range", "2026-11-26T10:05:00+00:00", "2026-11-26T10:06:00+00:00", [s.name for s in slices[:3]]),
    ]
    [gap] = pts.blocking_latest()
    assert "400 and 500" in gap.missing and gap.beyond == [slices[3].name] and gap.state == "gap"
    assert gap.after == datetime(2026, 11, 26, 10, 6, tzinfo=UTC)
    assert chain.covers(datetime(2026, 11, 26, 10, 0, 45, tzinfo=UTC))
    assert not chain.covers(datetime(2026, 11, 26, 10, 3, tzinfo=UTC))


def test_a_damaged_newest_slice_blocks_the_latest_state():
    from drkit.catalog import Catalog, Damaged
    from drkit.dumpers.redis.chain import restore_points

    t = _ms
    slices = [_slice(100, 200, t("2026-11-26T10:00:01"), t("2026-11-26T10:00:30"), 1, t("2026-11-26T10:00:02"))]
    tail = Damaged("logs/c/" + f"C.{200:020d}", "log", f"C.{200:020d}", "MAC mismatch")
    pts = restore_points(Catalog("c", [_base(100)], slices, [tail]))
    [gap] = pts.blocking_latest()
    assert gap.missing == tail.name and gap.damaged is tail and gap.lost and gap.state == "gap"
    assert gap.after == datetime(2026, 11, 26, 10, 0, 30, tzinfo=UTC)
    # A damaged slice the chain already passed (an older copy, another chain) blocks nothing.
    other = Damaged("logs/c/" + f"D.{200:020d}", "log", f"D.{200:020d}", "MAC mismatch")
    assert restore_points(Catalog("c", [_base(100)], slices, [other])).blocking_latest() == []
