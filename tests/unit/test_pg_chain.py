"""The PostgreSQL window/plan logic, on synthetic manifests and WAL records (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drkit.dumpers.postgres.chain import merged_intervals, plan_restore, windows
from drkit.dumpers.postgres.walnames import format_lsn, parse_lsn, parse_segment, segment_name
from drkit.errors import OutsideWindow
from drkit.repository import LogRecord, Manifest, StreamRef
from drkit.repository.manifest import iso

SEG = 16 * 1024 * 1024
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def base(bid: str, tli: int, start_seg: int, stop_seg: int, stop_min: float) -> Manifest:
    md = {
        "start_lsn": format_lsn(start_seg * SEG + 40), "stop_lsn": format_lsn(stop_seg * SEG + 300),
        "timeline": tli, "stop_time": iso(at(stop_min)), "segment_size": SEG, "wal_included": True,
    }
    return Manifest(bid, "db", "postgres", "full", iso(at(stop_min - 1)), iso(at(stop_min)),
                    [StreamRef("base.tar", 1, "d")], md)


def seg(tli: int, segno: int, first: float | None, last: float | None) -> LogRecord:
    md = {"first_commit": iso(at(first)) if first is not None else None,
          "last_commit": iso(at(last)) if last is not None else None}
    return LogRecord("db", segment_name(tli, segno), StreamRef("x", 1, "d"), md)


def history(tli: int, entries: list[tuple[int, int]]) -> LogRecord:
    return LogRecord("db", f"{tli:08X}.history", StreamRef("x", 1, "d"),
                     {"history": [[p, lsn] for p, lsn in entries]})


def test_names_roundtrip():
    assert segment_name(1, 0x1FF) == "000000010000000100000FF"[:0] + "0000000100000001000000FF"
    assert parse_segment("0000000100000001000000FF") == (1, 0x1FF)
    assert format_lsn(parse_lsn("1A/2B3C")) == "1A/2B3C"


def test_window_runs_to_last_commit_of_contiguous_chain_and_names_gap():
    b = base("b1", 1, 2, 3, stop_min=10)
    logs = [seg(1, 4, 11, 12), seg(1, 5, 13, 14), seg(1, 7, 20, 21)]  # 6 missing
    chains, notes = windows([b], logs)
    assert not notes
    assert merged_intervals(chains) == [(at(10), at(14))]
    assert chains[0].missing == segment_name(1, 6)
    with pytest.raises(OutsideWindow) as exc:
        plan_restore(chains, at(20.5), "db")
    assert segment_name(1, 6) in str(exc.value)
    with pytest.raises(OutsideWindow):
        plan_restore(chains, at(9), "db")  # before the backup was consistent


def test_plan_uses_target_inside_and_replays_all_at_the_end():
    b = base("b1", 1, 2, 3, stop_min=10)
    chains, _ = windows([b], [seg(1, 4, 11, 12), seg(1, 5, 13, 14)])
    p = plan_restore(chains, at(12.5), "db")
    assert p.backup.id == "b1" and p.target == at(12.5)
    # At (or after) the last archived commit: replay everything, no recovery target, so
    # PostgreSQL does not fail with "recovery ended before target".
    assert plan_restore(chains, at(14), "db").target is None
    assert plan_restore(chains, None, "db").target is None


def test_newest_covering_base_is_chosen_and_windows_merge():
    b1 = base("b1", 1, 2, 3, stop_min=10)
    # b2 carries its own WAL (segment 12, never archived): b1's chain ends before it.
    b2 = base("b2", 1, 12, 12, stop_min=30)
    logs = [seg(1, n, 10 + n, 10 + n + 0.5) for n in range(4, 12)]
    chains, _ = windows([b1, b2], logs)
    assert merged_intervals(chains) == [(at(10), at(21.5)), (at(30), at(30))]
    assert plan_restore(chains, at(15), "db").backup.id == "b1"
    # b2 stops at minute 30 > the last commit (21.5): its window is just its stop time.
    assert plan_restore(chains, None, "db").backup.id == "b2"


def test_a_chain_through_a_later_backup_reaches_its_stop_time_no_false_gap():
    # One commit, an idle stretch, a second backup: the WAL of b1's chain runs through b2's stop
    # segment, so every time between the commit and b2's stop is restorable (finding 5).
    b1 = base("b1", 1, 2, 3, stop_min=10)
    b2 = base("b2", 1, 5, 5, stop_min=18)
    logs = [seg(1, 4, 11, 11), seg(1, 5, None, None), seg(1, 6, None, None)]
    chains, _ = windows([b1, b2], logs)
    assert merged_intervals(chains) == [(at(10), at(18))]
    p = plan_restore(chains, at(15), "db")
    assert p.backup.id == "b1" and p.target is None  # nothing committed after 11: replay it all


def test_segment_closed_time_advances_the_newest_safe_time():
    b1 = base("b1", 1, 2, 3, stop_min=10)
    last = seg(1, 5, None, None)
    last.metadata["closed_at"] = iso(at(25))
    chains, _ = windows([b1], [seg(1, 4, 11, 12), last])
    assert merged_intervals(chains) == [(at(10), at(25))]


def test_timeline_switch_is_followed():
    # Backup on tli 1; a failover at segment 5 created tli 2; WAL continues on tli 2.
    b = base("b1", 1, 2, 3, stop_min=10)
    switch = 5 * SEG + 1000
    logs = [seg(1, 4, 11, 12), seg(1, 5, 13, 13.5), history(2, [(1, switch)]),
            seg(2, 5, 14, 14.5), seg(2, 6, 15, 16)]
    chains, _ = windows([b], logs)
    assert merged_intervals(chains) == [(at(10), at(16))]


def test_timeline_that_branched_before_the_backup_is_ignored():
    b = base("b1", 1, 6, 7, stop_min=30)
    logs = [history(2, [(1, 3 * SEG)]), seg(2, 8, 31, 32), seg(1, 8, 33, 34)]
    chains, _ = windows([b], logs)
    assert merged_intervals(chains) == [(at(30), at(34))]


def test_backup_without_included_wal_needs_its_range_archived():
    b = base("b1", 1, 2, 3, stop_min=10)
    b.metadata["wal_included"] = False
    chains, notes = windows([b], [seg(1, 2, 9, 9.5)])  # segment 3 missing
    assert chains == [] and segment_name(1, 3) in notes[0]


def test_parent_timeline_still_growing_after_a_branch_is_reported():
    b = base("b1", 1, 2, 3, stop_min=10)
    switch = 5 * SEG + 1000
    logs = [seg(1, 4, 11, 12), seg(1, 5, 13, 13.5), seg(1, 6, 14, 15), history(2, [(1, switch)]),
            seg(2, 5, 14, 14.5)]
    chains, notes = windows([b], logs)
    assert any("timeline 1 has WAL after timeline 2 branched" in n for n in notes)
    assert merged_intervals(chains) == [(at(10), at(14.5))]


def test_standby_backup_needs_its_archived_stop_segment_to_continue():
    b = base("b1", 1, 2, 3, stop_min=10)
    b.metadata["from_standby"] = True
    chains, notes = windows([b], [seg(1, 4, 11, 12)])  # stop segment 3 not archived yet
    assert chains == [] and segment_name(1, 3) in notes[0]
    chains, notes = windows([b], [seg(1, 3, 9, 9.5), seg(1, 4, 11, 12)])
    assert not notes and merged_intervals(chains) == [(at(10), at(12))]


def _catalog(manifests, logs, damaged=(), now=None):
    from drkit.catalog import Catalog

    return Catalog("db", list(manifests), list(logs), list(damaged), now)


def test_restore_points_name_what_each_needs_and_the_gap_that_cuts_the_chain():
    from drkit.catalog import Damaged
    from drkit.dumpers.postgres.chain import restore_points

    b = base("b1", 1, 2, 3, stop_min=10)
    b.metadata["wal_included"] = False  # node-local: the WAL from start to stop comes from the archive
    logs = [seg(1, 2, None, None), seg(1, 3, None, None), seg(1, 4, 11, 12), seg(1, 6, 20, 21), seg(1, 7, 22, 23)]
    for r in logs:
        r.pushed = iso(at(30))
    hole = Damaged("logs/db/" + segment_name(1, 5), "log", segment_name(1, 5), "MAC mismatch")
    pts = restore_points(_catalog([b], logs, [hole], now=at(60)))
    assert [(p.kind, p.start, p.end, p.logs) for p in pts.points] == [
        ("backup", at(10), at(10), [segment_name(1, 2), segment_name(1, 3)]),
        ("range", at(10), at(12), [segment_name(1, n) for n in (2, 3, 4)]),
    ]
    assert pts.intervals() == [(at(10), at(12))]
    [gap] = pts.blocking_latest()
    assert gap.missing == segment_name(1, 5) and gap.damaged is hole and gap.state == "gap"
    assert gap.beyond == [segment_name(1, 6), segment_name(1, 7)] and gap.after == at(12)
    assert "damaged (MAC mismatch)" in gap.text()
    d = pts.points[1].as_dict()
    assert d["needs"] == {"manifests": ["b1"], "logs": {"first": segment_name(1, 2), "last": segment_name(1, 4),
                                                        "count": 3}}


def test_a_damaged_newest_segment_blocks_the_latest_state():
    """Nothing was archived after it, but it was archived: a latest restore must not stop quietly
    before it (found by the damage mutation test)."""
    from drkit.catalog import Damaged
    from drkit.dumpers.postgres.chain import restore_points

    b = base("b1", 1, 2, 3, stop_min=10)
    logs = [seg(1, 4, 11, 12), seg(1, 5, 13, 14)]
    tail = Damaged("logs/db/" + segment_name(1, 6), "log", segment_name(1, 6), "MAC mismatch")
    pts = restore_points(_catalog([b], logs, [tail], now=at(60)))
    assert pts.intervals() == [(at(10), at(14))]
    [gap] = pts.blocking_latest()
    assert gap.missing == segment_name(1, 6) and gap.damaged is tail and gap.state == "gap"
    assert gap.beyond == [] and gap.after == at(14)
    # A damaged record older than the chain's end blocks nothing.
    old = Damaged("logs/db/" + segment_name(1, 1), "log", segment_name(1, 1), "MAC mismatch")
    assert restore_points(_catalog([b], logs, [old], now=at(60))).blocking_latest() == []


def test_a_hole_whose_successors_were_just_pushed_is_in_flight_then_a_gap():
    from drkit.dumpers.postgres.chain import restore_points

    b = base("b1", 1, 2, 3, stop_min=10)
    logs = [seg(1, 4, 11, 12), seg(1, 6, 20, 21)]
    logs[1].pushed = iso(at(30))
    assert restore_points(_catalog([b], logs, now=at(31))).gaps[0].state == "in_flight"
    assert restore_points(_catalog([b], logs, now=at(45))).gaps[0].state == "gap"


def test_a_later_base_past_the_hole_leaves_nothing_unreachable():
    from drkit.dumpers.postgres.chain import restore_points

    b1 = base("b1", 1, 2, 3, stop_min=10)
    b2 = base("b2", 1, 7, 7, stop_min=25)
    logs = [seg(1, 4, 11, 12), seg(1, 6, 20, 21), seg(1, 8, 26, 27)]
    pts = restore_points(_catalog([b1, b2], logs))
    assert pts.intervals() == [(at(10), at(12)), (at(25), at(27))]
    assert [g.missing for g in pts.gaps] == [segment_name(1, 5)]
    assert pts.blocking_latest() == []  # segment 8 is reached from b2; 6 lies before b2's start


def test_log_list_views_behave_as_lists():
    from drkit.catalog import LogList

    view = LogList(["h"], ["a", "b", "c"], 1, 3, {"a": 0, "b": 1, "c": 2})
    assert list(view) == ["h", "b", "c"] == view and len(view) == 3
    assert view[0] == "h" and view[-1] == "c" and view[1:] == ["b", "c"]
    assert "b" in view and "h" in view and "a" not in view
    with pytest.raises(IndexError):
        view[3]
