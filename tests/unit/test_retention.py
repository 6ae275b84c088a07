"""Retention: the policy model, durations, GFS buckets, and the planner over the real PostgreSQL
restore points of synthetic catalogs (pure logic, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drkit.catalog import Catalog, RestorePoint, RestorePoints
from drkit.config import parse_config
from drkit.dumpers.postgres.chain import restore_points
from drkit.dumpers.postgres.walnames import format_lsn, segment_name
from drkit.errors import ConfigError
from drkit.repository import LogRecord, Manifest, StreamRef
from drkit.repository.manifest import iso
from drkit.retention.planner import UNNEEDED, gfs, plan, subtract
from drkit.retention.policy import Duration, RetentionPolicy, parse_duration

SEG = 16 * 1024 * 1024
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- durations and the policy model ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("30d", Duration(days=30)), ("12h", Duration(hours=12)), ("2w", Duration(weeks=2)),
    ("1y2m", Duration(years=1, months=2)), ("1y5m7d2h", Duration(1, 5, 0, 7, 2)), ("0", Duration()),
])
def test_parse_duration(text: str, want: Duration) -> None:
    assert parse_duration(text) == want
    assert parse_duration(str(want)) == want


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "1d1d", "-1d", "1.5d", "30 d", "1d2"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_is_calendar_arithmetic() -> None:
    t = datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert Duration(months=1).before(t) == datetime(2026, 2, 28, 12, tzinfo=UTC)  # clamped to the month
    assert Duration(years=1).before(t) == datetime(2025, 3, 31, 12, tzinfo=UTC)
    assert Duration(weeks=1, hours=12).before(t) == datetime(2026, 3, 24, 0, tzinfo=UTC)


def _cfg(retention: object) -> dict:
    return {"repository": {"url": "/tmp/r"}, "encryption": {"key_env": "K"},
            "sources": {"db": {"type": "postgres", "dsn": "x", "retention": retention}}}


def test_config_retention_is_validated_and_stored_on_the_source() -> None:
    cfg = parse_config(_cfg({"keep_daily": 7, "keep_within": "30d", "pitr_window": "7d", "min_fulls": 2}))
    src = cfg.source("db")
    assert src.retention == RetentionPolicy(keep_daily=7, keep_within=Duration(days=30),
                                            pitr_window=Duration(days=7), min_fulls=2)
    assert "retention" not in src.options  # the dumper never sees it
    plain = parse_config({**_cfg(None), "sources": {"db": {"type": "postgres", "dsn": "x"}}})
    assert plain.source("db").retention is None


@pytest.mark.parametrize(("retention", "message"), [
    ({"keep_daily": "7"}, "sources.db.retention.keep_daily: expected an integer count"),
    ({"keep_daily": -1}, "sources.db.retention.keep_daily: expected an integer count"),
    ({"keep_within": "30 days"}, "sources.db.retention.keep_within: expected a duration"),
    ({"keep_forever": True}, "sources.db.retention.keep_forever: unknown setting (allowed: keep_daily"),
    ({}, "sources.db.retention: sets no rule"),
    ("7d", "sources.db.retention: expected a mapping"),
])
def test_config_retention_errors_name_the_field(retention: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_cfg(retention))
    assert message in str(exc.value)
    assert exc.value.exit_code == 2


def test_positional_source_config_still_works() -> None:
    from drkit.config import SourceConfig

    assert SourceConfig("a", "redis", {}).retention is None


def test_merged_overrides_only_the_rules_given() -> None:
    base = RetentionPolicy(keep_daily=7, min_fulls=2)
    assert base.merged(RetentionPolicy(keep_daily=3)) == RetentionPolicy(keep_daily=3, min_fulls=2)


# -- GFS buckets ----------------------------------------------------------------------------------

def _newest_first(*texts: str) -> list[datetime]:
    return sorted((datetime.fromisoformat(t).replace(tzinfo=UTC) for t in texts), reverse=True)


def test_gfs_daily_keeps_newest_of_each_day() -> None:
    times = _newest_first("2026-01-05T23:00", "2026-01-05T01:00", "2026-01-04T12:00", "2026-01-02T00:00",
                          "2026-01-01T00:00")
    assert gfs(times, "keep_daily", 3) == [0, 2, 3]
    assert gfs(times, "keep_daily", 10) == [0, 2, 3, 4]


def test_gfs_buckets_are_utc_and_weeks_are_iso() -> None:
    # 03:00 on Monday 2026-01-05 at +05:00 is Sunday the 4th, 22:00 in UTC: ISO week 1, the week
    # that also holds Monday 2025-12-29.
    plus5 = timezone(timedelta(hours=5))
    times = [datetime(2026, 1, 5, 12, tzinfo=UTC), datetime(2026, 1, 5, 3, tzinfo=plus5),
             datetime(2025, 12, 29, tzinfo=UTC)]
    assert gfs(times, "keep_weekly", 5) == [0, 1]
    assert gfs(times, "keep_daily", 5) == [0, 1, 2]
    assert gfs(times, "keep_monthly", 5) == [0, 2]
    assert gfs(times, "keep_yearly", 1) == [0]
    assert gfs(times, "keep_hourly", 2) == [0, 1]
    assert gfs(times, "keep_daily", 0) == []


def test_subtract_intervals() -> None:
    a, b, c, d = at(0), at(10), at(20), at(30)
    assert subtract([(a, d)], [(b, c)]) == [(a, b), (c, d)]
    assert subtract([(a, a), (b, c)], [(b, c)]) == [(a, a)]
    assert subtract([(a, b)], []) == [(a, b)]
    assert subtract([(a, b)], [(a, b)]) == []


# -- synthetic PostgreSQL histories ---------------------------------------------------------------
# Segment n holds commits at minute 10 n; a base backup taken at segment s starts at s, stops at s
# (5 minutes past the segment's commit) and includes its WAL.

def base(bid: str, s: int, finished: datetime | None = None) -> Manifest:
    md = {"start_lsn": format_lsn(s * SEG + 40), "stop_lsn": format_lsn(s * SEG + 300), "timeline": 1,
          "stop_time": iso(at(10 * s + 5)), "segment_size": SEG, "wal_included": True}
    fin = finished or at(10 * s + 5)
    return Manifest(bid, "db", "postgres", "full", iso(fin - timedelta(minutes=1)), iso(fin),
                    [StreamRef("base.tar", 1, "d")], md)


def seg(n: int, pushed: datetime | None = None) -> LogRecord:
    return LogRecord("db", segment_name(1, n), StreamRef("x", 1, "d"),
                     {"first_commit": iso(at(10 * n)), "last_commit": iso(at(10 * n + 1))},
                     pushed=iso(pushed or at(10 * n + 2)))


def catalog(manifests: list[Manifest], logs: list[LogRecord], now: datetime,
            forgotten: frozenset[str] = frozenset()) -> Catalog:
    return Catalog("db", list(manifests), list(logs), [], now, forgotten=forgotten)


def test_plan_keeps_what_kept_points_need_and_reports_the_lost_range() -> None:
    bases = [base(f"b{s}", s) for s in (2, 10, 20)]
    logs = [seg(n) for n in range(2, 30)]
    now = at(300)
    cat = catalog(bases, logs, now)
    pts = restore_points(cat)
    p = plan(pts, cat.manifests, cat.logs, RetentionPolicy(keep_last=2), now, timedelta(0))
    assert [m for m, _ in p.remove_manifests] == ["b2"]
    assert p.remove_manifests[0][1] == UNNEEDED
    assert set(p.keep_manifests) == {"b10", "b20"}
    assert [r for pt, rs in p.kept_points if pt.backup == "b20" for r in rs] == [
        "the newest full of the source (never removed)", "keep_last 2",
        "the latest state of the source (a restore without --point-in-time; never removed)"]
    # The latest state keeps the newest base's WAL; the other kept base is kept as a backup point:
    # the WAL between the bases goes and the range is reported lost.
    assert segment_name(1, 25) in p.keep_logs
    assert segment_name(1, 5) in dict(p.remove_logs)
    assert p.unreachable and p.unreachable[0][0] == at(25)
    # The same policy with a PITR window of 100 minutes keeps every time in it restorable.
    p2 = plan(pts, cat.manifests, cat.logs, RetentionPolicy(keep_last=2, pitr_window=Duration(hours=2)), at(300),
              timedelta(0))
    remaining = restore_points(catalog([m for m in bases if m.id in p2.keep_manifests],
                                       [r for r in logs if r.name in p2.keep_logs], now))
    assert any(a <= at(180) and b >= at(291) for a, b in remaining.intervals())
    assert "b2" not in p2.keep_manifests


def test_grace_and_leases_protect_objects() -> None:
    bases = [base("b2", 2), base("b10", 10, finished=at(299))]  # b10 committed a minute ago
    logs = [seg(n) for n in range(2, 12)] + [seg(12, pushed=at(299.5))]
    now = at(300)
    cat = catalog(bases, logs, now)
    p = plan(restore_points(cat), cat.manifests, cat.logs, RetentionPolicy(keep_last=1), now, timedelta(hours=1),
             protected=({"b2"}, {segment_name(1, 5)}))
    assert "b2" in p.keep_manifests and "named by a read lease" in p.keep_manifests["b2"]
    assert any("younger than the grace period" in r for r in p.keep_manifests["b10"])
    assert segment_name(1, 12) in p.keep_logs and segment_name(1, 5) in p.keep_logs
    assert segment_name(1, 7) in dict(p.remove_logs)


# -- the property test ----------------------------------------------------------------------------

@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Manifest], list[LogRecord], datetime]:
    n_segs = draw(st.integers(3, 60))
    base_at = sorted(draw(st.sets(st.integers(0, n_segs - 1), min_size=1, max_size=8)))
    missing = draw(st.sets(st.integers(0, n_segs - 1), max_size=3))
    now = at(10 * n_segs + draw(st.integers(0, 400)))
    manifests = []
    for i, s in enumerate(base_at):
        late = draw(st.booleans()) and draw(st.integers(0, 3)) == 0  # committed long after it stopped
        manifests.append(base(f"b{i:02d}-{s}", s, finished=now - timedelta(minutes=draw(st.integers(0, 30)))
                              if late else None))
    logs = [seg(n, pushed=at(10 * n + draw(st.sampled_from([2, 2, 2, 500])))) for n in range(n_segs)
            if n not in missing]
    return manifests, logs, now


durations = st.one_of(st.none(), st.builds(Duration, hours=st.integers(0, 12)),
                      st.builds(Duration, days=st.integers(0, 1)))
counts = st.one_of(st.none(), st.integers(0, 5))
policies = st.builds(RetentionPolicy, keep_last=counts, keep_hourly=counts, keep_daily=counts, keep_weekly=counts,
                     keep_monthly=counts, keep_yearly=counts, keep_within=durations,
                     keep_within_incremental=durations, pitr_window=durations, min_fulls=counts)


def _survives(p: RestorePoint, after: RestorePoints) -> bool:
    return any(q.kind == p.kind and q.backup == p.backup and q.start <= p.start and q.end >= p.end
               for q in after.points)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), policies, st.sampled_from([timedelta(0), timedelta(minutes=30), timedelta(hours=5)]))
def test_property_promised_points_stay_restorable(history, policy: RetentionPolicy, grace: timedelta) -> None:
    manifests, logs, now = history
    before = restore_points(catalog(manifests, logs, now))
    p = plan(before, manifests, logs, policy, now, grace)
    # Every object is either kept with a reason or removed with one, never both.
    assert set(p.keep_manifests).isdisjoint(m for m, _ in p.remove_manifests)
    assert set(p.keep_manifests) | {m for m, _ in p.remove_manifests} == {m.id for m in manifests}
    assert set(p.keep_logs).isdisjoint(n for n, _ in p.remove_logs)
    assert set(p.keep_logs) | {n for n, _ in p.remove_logs} == {r.name for r in logs}
    assert all(p.keep_manifests.values()) and all(p.keep_logs.values())
    assert all(r for _, r in p.remove_manifests) and all(r for _, r in p.remove_logs)
    assert all(r for _, r in p.kept_points)
    # What remains, through the real restore_points again.
    kept_m = [m for m in manifests if m.id in p.keep_manifests]
    kept_l = [r for r in logs if r.name in p.keep_logs]
    after = restore_points(catalog(kept_m, kept_l, now, frozenset(n for n, _ in p.remove_logs)))
    for point, _why in p.kept_points:
        assert _survives(point, after), (point, p.kept_points)
        assert all(m in p.keep_manifests for m in point.manifests)
        assert all(n in p.keep_logs for n in point.logs)
    fulls = sorted((q for q in before.points if q.kind == "backup" and len(q.manifests) == 1),
                   key=lambda q: (q.end, q.backup), reverse=True)
    promised = fulls[:1]  # the newest full, always
    promised += fulls[:policy.keep_last or 0] + fulls[:policy.min_fulls or 0]
    if policy.keep_within is not None and fulls:
        promised += [q for q in fulls if q.end >= policy.keep_within.before(fulls[0].end)]
    for q in promised:
        assert _survives(q, after), q
    # The PITR window: every time restorable before and inside it still is.
    if policy.pitr_window is not None:
        lo = policy.pitr_window.before(now)
        for a, b in before.intervals():
            for t in (a, b, a + (b - a) / 2, a + (b - a) / 3):
                if lo <= t <= now:
                    assert any(x <= t <= y for x, y in after.intervals()), (t, before.intervals(), after.intervals())
    # The latest state stays restorable, and forget cuts no chain: it opens no new gap.
    if before.intervals():
        assert after.intervals() and after.intervals()[-1][1] == before.intervals()[-1][1]
    new_gaps = {g.missing for g in after.gaps if g.state == "gap"} - {g.missing for g in before.gaps}
    assert not new_gaps, (new_gaps, [g.missing for g in before.gaps])
    # Nothing younger than the grace period is removed.
    cutoff = now - grace
    young_m = {m.id for m in manifests if datetime.fromisoformat(m.finished) > cutoff}
    young_l = {r.name for r in logs if datetime.fromisoformat(r.pushed) > cutoff}
    assert young_m <= set(p.keep_manifests) and young_l <= set(p.keep_logs)
    # Times that became unreachable are reported.
    for a, b in before.intervals():
        for t in (a, b, a + (b - a) / 2):
            if not any(x <= t <= y for x, y in after.intervals()):
                assert any(x <= t <= y for x, y in p.unreachable), (t, p.unreachable)


# -- incrementals (generic: a point needing several manifests) ------------------------------------

def _m(mid: str, minute: float) -> Manifest:
    return Manifest(mid, "db", "x", "full", iso(at(minute - 1)), iso(at(minute)), [StreamRef("s", 1, "d")], {})


def test_incrementals_are_removed_before_their_parents_and_keep_within_incremental_keeps_chains() -> None:
    ms = [_m("f1", 0), _m("i1", 10), _m("i2", 20), _m("f2", 100), _m("j1", 110)]
    pts = RestorePoints([
        RestorePoint("backup", at(0), at(0), "f1", ["f1"]),
        RestorePoint("backup", at(10), at(10), "i1", ["f1", "i1"]),
        RestorePoint("backup", at(20), at(20), "i2", ["f1", "i1", "i2"]),
        RestorePoint("backup", at(100), at(100), "f2", ["f2"]),
        RestorePoint("backup", at(110), at(110), "j1", ["f2", "j1"]),
    ])
    p = plan(pts, ms, [], RetentionPolicy(keep_last=1), at(200), timedelta(0))
    assert [m for m, _ in p.remove_manifests] == ["i2", "i1", "f1"]  # children first
    # The newest incremental is the latest state: never removed, nor its parent.
    assert set(p.keep_manifests) == {"f2", "j1"}
    assert any("the latest state" in r for pt, rs in p.kept_points if pt.backup == "j1" for r in rs)
    p = plan(pts, ms, [], RetentionPolicy(keep_last=1, keep_within_incremental=Duration(hours=1, days=0)),
             at(200), timedelta(0))
    # j1 ended within an hour of the newest incremental: it is kept, and its parent f2 with it.
    assert set(p.keep_manifests) == {"f2", "j1"}
    assert any("needed by backup point" in r for r in p.keep_manifests["f2"])
    # A young incremental keeps the parents that make it usable.
    p = plan(pts, ms, [], RetentionPolicy(keep_last=1), at(20.5), timedelta(minutes=5))
    assert {"f1", "i1", "i2"} <= set(p.keep_manifests)


# -- the forget library: which sources, and read leases -------------------------------------------

def test_policies_refuse_a_source_without_one_and_flags_override() -> None:
    from drkit.retention.forget import policies

    cfg = parse_config({"repository": {"url": "/tmp/r"}, "encryption": {"key_env": "K"}, "sources": {
        "a": {"type": "redis", "url": "redis://x", "retention": {"keep_last": 3, "min_fulls": 2}},
        "b": {"type": "redis", "url": "redis://x"}}})
    with pytest.raises(ConfigError, match="source 'b' has no retention policy.*nothing was removed") as exc:
        policies(cfg, "b", None)
    assert exc.value.exit_code == 2
    with pytest.raises(ConfigError):
        policies(cfg, "b", RetentionPolicy())  # empty flags are no policy
    assert policies(cfg, "b", RetentionPolicy(keep_last=1)) == {"b": RetentionPolicy(keep_last=1)}
    assert policies(cfg, None, RetentionPolicy(keep_last=1)) == {"a": RetentionPolicy(keep_last=1, min_fulls=2)}


def test_a_live_read_lease_that_names_nothing_blocks_forget(tmp_path) -> None:
    from test_repository import wrapper

    from drkit.errors import LockedError
    from drkit.repository import Repository, leases
    from drkit.retention.forget import protected
    from drkit.storage.local import LocalStorage

    (tmp_path / "repo").mkdir()
    repo = Repository.init(LocalStorage(tmp_path / "repo"), wrapper())
    assert protected(repo) == (set(), set(), [])
    held = leases.acquire(repo, "read", "restore-1", 60, "a restore")
    with pytest.raises(LockedError, match="leases/read/restore-1"):
        protected(repo)
    leases.release(repo, held)
    repo.storage.put("leases/read/broken", b"not a lease", exclusive=False)
    mids, names, notes = protected(repo)
    assert not mids and not names and "leases/read/broken is damaged" in notes[0]


def test_cli_flag_errors_name_the_flag(tmp_path, capsys) -> None:
    from drkit.cli.main import main

    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(f"repository: {{url: {tmp_path / 'none'}}}\nencryption: {{key_env: K}}\n")
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg), "forget", "db", "--keep-within", "3x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--keep-within: expected a duration such as 30d" in err and "'3x'" in err
