"""Gaps in a log chain (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from drkit.catalog import Damaged, Gap, classify


def test_a_hole_whose_successors_just_arrived_is_in_flight_but_a_damaged_one_never() -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    state = classify([now - timedelta(seconds=5)], now, timedelta(minutes=2))
    assert state == "in_flight"
    assert Gap("backup b", "seg-7", None, ["seg-8"], state=state).state == "in_flight"
    damaged = Damaged("logs/src/seg-7", "log", "seg-7", "authentication failed")
    gap = Gap("backup b", "seg-7", None, ["seg-8"], state=state, damaged=damaged)
    assert gap.state == "gap" and "damaged" in gap.text()
