"""The look-back RPO over a window of the repository's history (pure; a synthetic restore-points
function: each log record extends the newest safe time to its own 'safe' time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from drkit.catalog import Catalog, RestorePoint, RestorePoints
from drkit.drills.lookback import lookback_rpo
from drkit.repository import LogRecord, Manifest, StreamRef
from drkit.repository.manifest import iso, parse_iso

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def catalog(pushes: list[tuple[float, float]]) -> Catalog:
    """A full finished at 0; log records pushed at p holding commits up to s (s <= p)."""
    full = Manifest("b1", "src", "x", "full", iso(at(-10)), iso(at(0)), [StreamRef("d", 1, "x")])
    logs = [LogRecord("src", f"r{i:04d}", StreamRef("l", 1, "x"), {"safe": iso(at(s))}, pushed=iso(at(p)))
            for i, (p, s) in enumerate(pushes)]
    return Catalog("src", [full], logs)


def points(cat: Catalog) -> RestorePoints:
    if not cat.manifests:
        return RestorePoints([])
    end = max([parse_iso(r.metadata["safe"]) for r in cat.logs] + [at(0)])
    return RestorePoints([RestorePoint("range", at(0), end, "b1", ["b1"])])


def test_a_steady_sawtooth_gives_its_peak_and_percentiles() -> None:
    # Every 60 s a record arrives holding everything up to 5 s before it: RPO rises 5 -> 65 s.
    cat = catalog([(60 * k, 60 * k - 5) for k in range(1, 61)])
    got = lookback_rpo(cat, points, at(3600), timedelta(hours=1) - timedelta(seconds=1))
    assert got["worst_seconds"] == 65.0 and got["commits_in_window"] == 60
    assert abs(got["median_seconds"] - 35.0) < 0.5 and abs(got["p95_seconds"] - 62.0) < 0.5
    assert got["seconds_without_a_restore_point"] == 0 and not got["upper_bound"]


def test_a_stall_is_the_worst_and_its_time_is_named() -> None:
    pushes = [(60 * k, 60 * k - 5) for k in range(1, 11)] + [(1800, 1795)]  # nothing from 600 s to 1800 s
    got = lookback_rpo(catalog(pushes), points, at(1900), timedelta(seconds=1899))
    assert got["worst_seconds"] == 1800 - 595 and got["worst_at"] == iso(at(1800))


def test_before_the_first_restore_point_is_counted_apart() -> None:
    cat = catalog([(100, 95)])
    cat.manifests[0].finished = iso(at(50))
    got = lookback_rpo(cat, points, at(200), timedelta(seconds=200))
    assert got["seconds_without_a_restore_point"] == 50.0
    assert got["worst_seconds"] == 105.0  # at the window's end: 200 - 95


def test_thinning_gives_an_upper_bound() -> None:
    cat = catalog([(10 * k, 10 * k - 1) for k in range(1, 501)])
    exact = lookback_rpo(cat, points, at(5000), timedelta(seconds=4999), max_evaluations=1000)
    thin = lookback_rpo(cat, points, at(5000), timedelta(seconds=4999), max_evaluations=50)
    assert thin["upper_bound"] and not exact["upper_bound"] and thin["evaluations"] <= 52
    assert thin["worst_seconds"] >= exact["worst_seconds"] == 11.0
    assert thin["p95_seconds"] >= exact["p95_seconds"]
