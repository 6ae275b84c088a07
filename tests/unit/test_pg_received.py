"""Sealed partial copies from ``drkit pg receive`` in the PostgreSQL window logic (pure)."""

from __future__ import annotations

from test_pg_chain import at, base, seg

from drkit.catalog import Catalog
from drkit.dumpers.postgres.chain import merged_intervals, plan_restore, restore_points, windows
from drkit.dumpers.postgres.walnames import segment_name
from drkit.repository import LogRecord, StreamRef
from drkit.repository.manifest import iso


def received(tli: int, segno: int, offset: int, last: float | None, closed: float | None = None) -> LogRecord:
    md = {"kind": "received", "first_commit": iso(at(last)) if last is not None else None,
          "last_commit": iso(at(last)) if last is not None else None,
          **({"closed_at": iso(at(closed))} if closed is not None else {})}
    return LogRecord("db", f"{segment_name(tli, segno)}.{offset:08X}.received", StreamRef("x", 1, "d"), md)


def test_the_newest_sealed_copy_extends_the_window_past_the_last_complete_segment():
    b = base("b1", 1, 2, 3, stop_min=10)
    logs = [seg(1, 4, 11, 12), received(1, 5, 0x1000, 13), received(1, 5, 0x8000, 15)]
    [chain] = windows([b], logs)[0]
    assert merged_intervals([chain]) == [(at(10), at(15))]
    assert chain.segments[-1].name == f"{segment_name(1, 5)}.00008000.received"
    assert "only a partial copy" in chain.missing
    plan = plan_restore([chain], at(14), "db")
    assert plan.last_segment == segment_name(1, 5)  # restore_command's --until is the segment's name


def test_an_idle_server_caught_up_at_the_seal_is_safe_up_to_the_seal():
    b = base("b1", 1, 2, 3, stop_min=10)
    [chain] = windows([b], [seg(1, 4, 11, 12), received(1, 5, 0x1000, 13, closed=30)])[0]
    assert chain.end == at(30)


def test_the_complete_segment_supersedes_its_sealed_copies():
    b = base("b1", 1, 2, 3, stop_min=10)
    logs = [received(1, 4, 0x8000, 12), seg(1, 4, 11, 12.5), seg(1, 5, 13, 14), received(1, 4, 0x9000, 12.2)]
    [chain] = windows([b], logs)[0]
    assert [s.name for s in chain.segments] == [segment_name(1, 4), segment_name(1, 5)]
    points = restore_points(Catalog("db", [b], logs))
    needed = {n for p in points.points for n in p.logs}
    assert not any(n.endswith(".received") for n in needed)


def test_a_sealed_copy_ends_the_run_even_with_complete_segments_after_it():
    b = base("b1", 1, 2, 3, stop_min=10)
    logs = [seg(1, 4, 11, 12), received(1, 5, 0x1000, 13), seg(1, 6, 20, 21)]
    [chain] = windows([b], logs)[0]
    assert chain.end == at(13) and chain.last_segno == 5
    points = restore_points(Catalog("db", [b], logs))
    [gap] = points.gaps
    assert gap.missing.startswith(segment_name(1, 5)) and segment_name(1, 6) in gap.beyond
