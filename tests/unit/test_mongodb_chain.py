"""The MongoDB restore points (drkit.dumpers.mongodb.chain), on hand-built catalogs (pure logic).

Manifests and log records carry the metadata shapes the dumper writes: ``full_backup``'s
``meta`` dict (``oplog``, ``identity``, ``oplog_end``, ``consistent_at_ms``, ...) and
``SliceWriter._meta`` (``epoch``, ``identity``, ``after`` / ``last`` positions, ``entries``,
``first_ms`` / ``last_ms`` / ``safe_ms``); heartbeats are named ``<epoch>.<after ts>.hb<safe_ms>``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from drkit.catalog import Catalog, Damaged
from drkit.dumpers.mongodb.chain import build_chains, consistent_at, dt_ms, plans, restore_points
from drkit.dumpers.mongodb.oplog import Identity, Position
from drkit.dumpers.mongodb.slices import slice_name
from drkit.repository import LogRecord, Manifest, StreamRef
from drkit.repository.manifest import iso

S0 = 1_796_000_000  # ts seconds of the first entry used below (late 2026)
IDENT = Identity("0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e", "4242@179599999", "db1:27017")
OTHER = Identity("ffffffffffffffffffffffffffffffff", "777@179599999", "db9:27017")
PUSHED = datetime.fromtimestamp(S0 + 3600, UTC)  # when the records below were committed
LONG_AFTER = PUSHED + timedelta(hours=1)


def pos(k: int, inc: int = 1) -> Position:
    """The position of an entry ``k`` seconds after S0 (its wall time is its ts second)."""
    return Position((S0 + k, inc), f"{k:04d}{inc:04d}aaaabbbb", (S0 + k) * 1000)


def ms(k: float) -> int:
    return int((S0 + k) * 1000)


def at(k: float) -> datetime:
    return dt_ms(ms(k))


def full(bid: str, end: Position | None, cons_k: float, *, ident: Identity = IDENT, oplog: bool = True,
         start: Position | None = None) -> Manifest:
    meta: dict = {"server": "db1:27017", "oplog": oplog, "consistent": oplog, "documents": 3, "bytes": 300,
                  "collections": 1, "databases": ["app"], "views": 0, "users": 0, "roles": 0, "notes": [],
                  "include": [], "exclude": [], "consistent_at_ms": ms(cons_k)}
    if oplog:
        meta.update({"identity": ident.as_dict(), "epoch": ident.epoch,
                     "oplog_start": start.as_dict() if start else None,
                     "oplog_end": end.as_dict() if end else None,
                     "window_after": list(start.ts) if start else None, "window_entries": 0})
    meta["consistent_at"] = iso(dt_ms(meta["consistent_at_ms"]))
    return Manifest(bid, "app", "mongodb", "full", iso(at(cons_k - 5)), iso(at(cons_k + 1)),
                    [StreamRef("catalog.json", 1, "d"), StreamRef("oplog.bson", 1, "d")], meta,
                    provides=["backup", "range"] if oplog else ["backup"])


def piece(after: Position | None, first: Position, last: Position, *, safe_k: float | None = None,
          entries: int = 3, ident: Identity = IDENT, pushed: datetime = PUSHED) -> LogRecord:
    """An oplog slice as SliceWriter.seal stores it."""
    safe = ms(safe_k) if safe_k is not None else last.wall_ms
    meta = {"epoch": ident.epoch, "identity": ident.as_dict(), "after": after.as_dict() if after else None,
            "last": last.as_dict(), "entries": entries, "bytes": 100 * entries, "first_ms": first.wall_ms,
            "last_ms": last.wall_ms, "safe_ms": safe}
    return LogRecord("app", slice_name(ident.epoch, first.ts), StreamRef("s", 1, "d"), meta, iso(pushed))


def beat(at_pos: Position, safe_k: float, *, ident: Identity = IDENT, pushed: datetime = PUSHED) -> LogRecord:
    """A heartbeat as SliceWriter.seal stores it: no entries, after == last."""
    safe = ms(safe_k)
    meta = {"epoch": ident.epoch, "identity": ident.as_dict(), "after": at_pos.as_dict(), "last": at_pos.as_dict(),
            "entries": 0, "bytes": 0, "first_ms": at_pos.wall_ms, "last_ms": at_pos.wall_ms, "safe_ms": safe}
    return LogRecord("app", f"{slice_name(ident.epoch, at_pos.ts)}.hb{safe}", StreamRef("s", 0, "d"), meta,
                     iso(pushed))


def catalog(manifests: list[Manifest], logs: list[LogRecord], *, damaged: list[Damaged] | None = None,
            now: datetime = LONG_AFTER, forgotten: frozenset[str] = frozenset()) -> Catalog:
    return Catalog("app", manifests, sorted(logs, key=lambda r: r.name), damaged or [], now,
                   timedelta(minutes=10), forgotten)


def damaged_log(name: str) -> Damaged:
    return Damaged(f"logs/app/{name}", "log", name, "unreadable (IntegrityError: bad seal)")


def names(recs: list[LogRecord]) -> list[str]:
    return [r.name for r in recs]


def chain3() -> tuple[Manifest, list[LogRecord]]:
    """A full ending at entry 10, then slices (10, 20], (20, 30], (30, 40]."""
    f = full("F1", pos(10), 10.5)
    s1 = piece(pos(10), pos(11), pos(20))
    s2 = piece(pos(20), pos(21), pos(30))
    s3 = piece(pos(30), pos(31), pos(40), safe_k=41)
    return f, [s1, s2, s3]


# -- a full alone ----------------------------------------------------------------------------------

def test_full_alone_is_a_backup_point_at_consistent_at():
    f = full("F1", pos(10), 10.5)
    rp = restore_points(catalog([f], []))
    assert len(rp.points) == 1
    p = rp.points[0]
    assert (p.kind, p.start, p.end, p.backup, p.manifests, list(p.logs)) == ("backup", at(10.5), at(10.5), "F1",
                                                                          ["F1"], [])
    assert rp.gaps == [] and rp.notes == []
    assert rp.newest_safe_time() == at(10.5)
    assert consistent_at(f) == at(10.5)


def test_consistent_at_falls_back_to_finished():
    f = full("F1", pos(10), 10.5)
    del f.metadata["consistent_at_ms"]
    assert consistent_at(f) == at(11.5)  # finished = cons_k + 1


def test_plan_of_full_without_slices_has_no_chain():
    f = full("F1", pos(10), 10.5)
    (plan,) = plans([f], build_chains([]))
    assert plan.chain is None and plan.start == plan.end == at(10.5)
    assert plan.slices_until(at(100)) == []


# -- contiguous slices -----------------------------------------------------------------------------

def test_full_and_contiguous_slices_make_a_range_to_the_newest_safe_time():
    f, slices = chain3()
    rp = restore_points(catalog([f], list(reversed(slices))))
    kinds = sorted((p.kind, p.start, p.end) for p in rp.points)
    assert kinds == [("backup", at(10.5), at(10.5)), ("range", at(10.5), at(41))]
    rng = next(p for p in rp.points if p.kind == "range")
    assert rng.backup == "F1" and rng.manifests == ["F1"]
    assert list(rng.logs) == names(slices)  # in chain order
    assert rng.as_dict()["needs"]["logs"] == {"first": slices[0].name, "last": slices[-1].name, "count": 3}
    assert rp.gaps == [] and rp.notes == []
    assert rp.newest_safe_time() == at(41)
    assert rp.intervals() == [(at(10.5), at(41))]


def test_build_chains_links_slices_by_position_whatever_their_order():
    _, slices = chain3()
    (c,) = build_chains([slices[2], slices[0], slices[1]])
    assert names(c.slices) == names(slices)
    assert c.start == pos(10) and c.last == pos(40)
    assert c.safe_ms() == ms(41)
    assert c.heartbeats == []


def test_plan_reads_only_slices_whose_first_entry_is_at_or_before_the_target():
    f, slices = chain3()
    (plan,) = plans([f], build_chains(slices))
    assert plan.chain is not None and (plan.start, plan.end) == (at(10.5), at(41))
    assert names(plan.slices_until(at(25))) == names(slices[:2])
    assert names(plan.slices_until(at(21))) == names(slices[:2])  # s2's first entry is at 21
    assert names(plan.slices_until(at(20.9))) == names(slices[:1])
    assert names(plan.slices_until(at(40))) == names(slices)


def test_a_slice_whose_after_matches_only_in_ts_does_not_link():
    """Positions link by ts *and* fingerprint: another entry at the same ts is another oplog."""
    f, slices = chain3()
    other = Position(pos(20).ts, "ffffffffffffffff", pos(20).wall_ms)
    s2 = piece(other, pos(21), pos(30))
    chains = build_chains([slices[0], s2])
    assert len(chains) == 2
    rng = [p for p in restore_points(catalog([f], [slices[0], s2])).points if p.kind == "range"]
    assert [(p.end, list(p.logs)) for p in rng] == [(at(20), [slices[0].name])]


# -- heartbeats ------------------------------------------------------------------------------------

def test_heartbeats_extend_the_window_of_an_idle_chain():
    f, slices = chain3()
    hb1 = beat(pos(40), 100)
    hb2 = beat(pos(40), 160)
    rp = restore_points(catalog([f], [*slices, hb2, hb1]))
    rng = next(p for p in rp.points if p.kind == "range")
    assert (rng.start, rng.end) == (at(10.5), at(160))
    assert list(rng.logs) == [*names(slices), hb1.name, hb2.name]
    assert rp.gaps == [] and rp.notes == []


def test_heartbeat_only_chain_right_after_a_full():
    f = full("F1", pos(10), 10.5)
    hb = beat(pos(10), 70)
    (c,) = build_chains([hb])
    assert c.slices == [] and names(c.heartbeats) == [hb.name] and c.start == pos(10)
    rp = restore_points(catalog([f], [hb]))
    rng = next(p for p in rp.points if p.kind == "range")
    assert (rng.start, rng.end, list(rng.logs)) == (at(10.5), at(70), [hb.name])
    assert rp.gaps == [] and rp.notes == []
    (plan,) = plans([f], build_chains([hb]))
    assert plan.slices_until(at(70)) == []  # nothing to replay, only time proven quiet


def test_heartbeat_at_an_inner_position_does_not_extend_past_the_chain_end():
    f, slices = chain3()
    hb = beat(pos(20), 25)  # sealed while idle after s1, before s2 came
    rp = restore_points(catalog([f], [*slices, hb]))
    rng = next(p for p in rp.points if p.kind == "range")
    assert rng.end == at(41)
    assert rng.logs[:3] == names(slices)


# -- holes -----------------------------------------------------------------------------------------

def _hole(now: datetime) -> tuple[Manifest, list[LogRecord], LogRecord, Catalog]:
    f, (s1, s2, s3) = chain3()
    s4 = piece(pos(40), pos(41), pos(50), safe_k=52)
    return f, [s1, s3, s4], s2, catalog([f], [s1, s3, s4], now=now)


def test_missing_slice_in_the_middle_is_a_gap_after_the_grace():
    f, (s1, s3, s4), s2, cat = _hole(LONG_AFTER)
    rp = restore_points(cat)
    rng = [p for p in rp.points if p.kind == "range"]
    assert [(p.start, p.end, list(p.logs)) for p in rng] == [(at(10.5), at(20), [s1.name])]
    (g,) = rp.gaps
    assert g.state == "gap"
    assert g.beyond == [s3.name, s4.name]
    assert g.after == at(20)
    assert f"{S0 + 20}:1" in g.missing and f"{S0 + 30}:1" in g.missing
    assert s1.name in g.chain
    assert g.damaged is None and not g.lost
    assert rp.blocking_latest() == [g]
    assert rp.newest_safe_time() == at(20)
    assert any(s3.name in n for n in rp.notes_all())


def test_missing_slice_is_in_flight_within_the_grace_of_its_successors_push():
    _, (_, s3, s4), _, cat = _hole(PUSHED + timedelta(minutes=3))
    (g,) = restore_points(cat).gaps
    assert g.state == "in_flight" and g.beyond == [s3.name, s4.name]
    _, _, _, cat = _hole(PUSHED + timedelta(minutes=11))
    assert restore_points(cat).gaps[0].state == "gap"


def test_hole_at_a_forgotten_record_is_not_a_gap():
    f, (s1, s3, s4), s2, _ = _hole(LONG_AFTER)
    rp = restore_points(catalog([f], [s1, s3, s4], forgotten=frozenset({s2.name})))
    assert rp.gaps == [] and rp.blocking_latest() == []
    assert [(p.kind, p.end) for p in rp.points] == [("backup", at(10.5)), ("range", at(20))]


def test_a_forgotten_record_elsewhere_does_not_excuse_the_hole():
    f, (s1, s3, s4), s2, _ = _hole(LONG_AFTER)
    older = slice_name(IDENT.epoch, (S0 + 1, 1))  # before the hole (s1's predecessor)
    rp = restore_points(catalog([f], [s1, s3, s4], forgotten=frozenset({older})))
    assert [g.beyond for g in rp.gaps] == [[s3.name, s4.name]]


def test_damaged_slice_in_the_middle_is_the_gap_it_names():
    f, (s1, s3, s4), s2, _ = _hole(LONG_AFTER)
    d = damaged_log(s2.name)
    rp = restore_points(catalog([f], [s1, s3, s4], damaged=[d]))
    (g,) = rp.gaps
    assert g.damaged is d and g.beyond == [s3.name, s4.name] and not g.lost
    assert "damaged" in g.text()


def test_damaged_newest_slice_is_a_lost_gap_blocking_the_latest_state():
    f, (s1, s2, s3) = chain3()
    d = damaged_log(s3.name)
    rp = restore_points(catalog([f], [s1, s2], damaged=[d]))
    rng = next(p for p in rp.points if p.kind == "range")
    assert rng.end == at(30) and list(rng.logs) == [s1.name, s2.name]
    (g,) = rp.gaps
    assert g.lost and g.damaged is d and g.missing == s3.name and g.beyond == [] and g.state == "gap"
    assert g.after == at(30)
    assert rp.blocking_latest() == [g]


def test_damaged_newest_slice_right_after_a_full_blocks_the_latest_state():
    f, (s1, _, _) = chain3()
    d = damaged_log(s1.name)
    rp = restore_points(catalog([f], [], damaged=[d]))
    assert [p.kind for p in rp.points] == ["backup"]
    (g,) = rp.blocking_latest()
    assert g.lost and g.damaged is d and g.after == at(10.5) and "F1" in g.chain


def test_damaged_heartbeat_does_not_block_the_latest_state():
    f, slices = chain3()
    hb = beat(pos(40), 100)
    d = damaged_log(hb.name)
    rp = restore_points(catalog([f], slices, damaged=[d]))
    assert rp.gaps == [] and rp.blocking_latest() == []
    assert next(p for p in rp.points if p.kind == "range").end == at(41)
    assert any(d.key in n and "damaged" in n for n in rp.notes)


def test_damaged_manifest_is_noted_and_other_points_stay():
    f, slices = chain3()
    d = Damaged("manifests/app/F0", "manifest", "F0", "unreadable (ValueError: bad seal)")
    rp = restore_points(catalog([f], slices, damaged=[d]))
    assert any("F0" in n and "cannot be restored" in n for n in rp.notes)
    assert sorted(p.kind for p in rp.points) == ["backup", "range"] and rp.gaps == []


# -- fulls and chains ------------------------------------------------------------------------------

def test_full_taken_while_the_follower_ran_attaches_to_the_chain_it_lies_in():
    f1, slices = chain3()
    f2 = full("F2", pos(25), 26, start=pos(22))  # its end lies inside s2 = (20, 30]
    rp = restore_points(catalog([f1, f2], slices))
    ranges = {p.backup: p for p in rp.points if p.kind == "range"}
    assert (ranges["F2"].start, ranges["F2"].end) == (at(26), at(41))
    assert list(ranges["F2"].logs) == names(slices[1:])  # s2 holds the entries after 25
    assert list(ranges["F1"].logs) == names(slices)
    assert rp.gaps == [] and rp.notes == []
    plan2 = next(p for p in plans([f1, f2], build_chains(slices)) if p.base.id == "F2")
    assert names(plan2.slices_until(at(26))) == names(slices[1:2])


def test_full_ending_at_a_slice_boundary_needs_only_the_slices_after_it():
    f1, slices = chain3()
    f2 = full("F2", pos(30), 30.5)
    rp = restore_points(catalog([f1, f2], slices))
    r2 = next(p for p in rp.points if p.kind == "range" and p.backup == "F2")
    assert (r2.start, r2.end, list(r2.logs)) == (at(30.5), at(41), [slices[2].name])


def test_two_fulls_on_one_chain_each_give_a_backup_point_and_a_range():
    f1, slices = chain3()
    f2 = full("F2", pos(30), 30.5)
    rp = restore_points(catalog([f1, f2], slices))
    assert sorted((p.backup, p.kind) for p in rp.points) == [("F1", "backup"), ("F1", "range"),
                                                             ("F2", "backup"), ("F2", "range")]
    assert rp.intervals() == [(at(10.5), at(41))]
    assert [p.backup for p in rp.covering(at(35))] == ["F1", "F2"]
    assert [p.backup for p in rp.covering(at(15))] == ["F1"]


def test_slices_of_another_oplog_never_attach():
    f = full("F1", pos(10), 10.5)
    # The foreign slice even starts at exactly the full's end position: only the identity differs.
    foreign = [piece(pos(10), pos(11), pos(20), ident=OTHER), piece(pos(20), pos(21), pos(30), ident=OTHER)]
    rp = restore_points(catalog([f], foreign))
    assert [(p.kind, p.start, p.end) for p in rp.points] == [("backup", at(10.5), at(10.5))]
    (plan,) = plans([f], build_chains(foreign))
    assert plan.chain is None


def test_only_the_chain_of_the_fulls_oplog_attaches_when_both_exist():
    f, slices = chain3()
    foreign = [piece(pos(10), pos(11), pos(90), safe_k=95, ident=OTHER)]
    rp = restore_points(catalog([f], [*slices, *foreign]))
    rng = next(p for p in rp.points if p.kind == "range")
    assert rng.end == at(41) and list(rng.logs) == names(slices)


def test_standalone_full_is_a_backup_point_only():
    f = full("S1", None, 10.5, oplog=False)
    _, slices = chain3()
    rp = restore_points(catalog([f], []))
    assert [(p.kind, p.start, p.end, p.backup) for p in rp.points] == [("backup", at(10.5), at(10.5), "S1")]
    (plan,) = plans([f], build_chains(slices))
    assert plan.chain is None and plan.start == plan.end == at(10.5)


def test_slices_after_no_full_are_a_note_and_no_restore_point():
    _, slices = chain3()
    rp = restore_points(catalog([], slices))
    assert rp.points == [] and rp.gaps == []
    assert len(rp.notes) == 1
    assert slices[0].name in rp.notes[0] and slices[-1].name in rp.notes[0]
    assert "no restore can reach them" in rp.notes[0]
    assert rp.newest_safe_time() is None


def test_slices_before_a_later_full_of_their_oplog_are_noted_not_reachable():
    _, slices = chain3()
    late = full("F9", pos(60), 60.5)
    rp = restore_points(catalog([late], slices))
    assert [(p.kind, p.backup) for p in rp.points] == [("backup", "F9")]
    assert any(slices[0].name in n for n in rp.notes)


def test_a_newer_full_at_the_far_side_of_a_hole_bridges_it():
    f1, (s1, _, s3) = chain3()
    f3 = full("F3", pos(30), 30.5)  # ends exactly where s3 starts
    rp = restore_points(catalog([f1, f3], [s1, s3]))
    assert rp.gaps == [] and rp.notes == []
    ends = {(p.backup, p.kind): (p.end, list(p.logs)) for p in rp.points}
    assert ends[("F1", "range")] == (at(20), [s1.name])
    assert ends[("F3", "range")] == (at(41), [s3.name])
    assert rp.intervals() == [(at(10.5), at(20)), (at(30.5), at(41))]


def test_full_of_an_empty_oplog_continues_into_slices_from_the_oplog_start():
    fe = full("FE", None, 5)  # the oplog was empty: no end position
    t1 = piece(None, pos(11), pos(20))
    rp = restore_points(catalog([fe], [t1]))
    rng = next(p for p in rp.points if p.kind == "range")
    assert (rng.start, rng.end, list(rng.logs)) == (at(5), at(20), [t1.name])
    assert rp.gaps == [] and rp.notes == []


# -- holes next to full backups (found in review) ------------------------------------------------------

def test_missing_first_slice_after_a_full_is_a_gap_blocking_the_latest_state():
    f, (_s1, s2, s3) = chain3()
    points = restore_points(catalog([f], [s2, s3]))
    assert len(points.gaps) == 1
    gap = points.gaps[0]
    assert gap.chain == "backup F1" and gap.beyond == names([s2, s3]) and gap.state == "gap"
    assert gap.after == at(10.5)
    assert points.blocking_latest() == [gap]
    assert not any("no restore can reach" in n for n in points.notes)


def test_damaged_first_slice_after_a_full_is_the_gap_it_names():
    f, (s1, s2, s3) = chain3()
    d = damaged_log(s1.name)
    points = restore_points(catalog([f], [s2, s3], damaged=[d]))
    assert [g.damaged for g in points.gaps] == [d]
    assert points.blocking_latest()


def test_a_later_full_inside_the_chain_past_a_hole_keeps_the_latest_state_reachable():
    f1 = full("F1", pos(10), 10.5)
    s1 = piece(pos(10), pos(11), pos(20))
    s3 = piece(pos(30), pos(31), pos(40), safe_k=41)
    f2 = full("F2", pos(35), 36)
    points = restore_points(catalog([f1, f2], [s1, s3]))
    assert not points.blocking_latest()
    assert points.newest_safe_time() == at(41)


def test_a_full_inside_the_first_slice_gives_no_unreachable_note():
    f2 = full("F2", pos(25), 26)
    s2 = piece(pos(20), pos(21), pos(30))
    s3 = piece(pos(30), pos(31), pos(40), safe_k=41)
    points = restore_points(catalog([f2], [s2, s3]))
    assert not points.notes and not points.gaps
    assert points.newest_safe_time() == at(41)
