"""Sealed log catalog objects (drkit/repository/logcat.py): pure repository level, no servers."""

from __future__ import annotations

import io
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest

from drkit.catalog import load_catalog
from drkit.config import Secret
from drkit.errors import IntegrityError
from drkit.repository import LogRecord, Repository, StreamRef, logcat
from drkit.repository import format as fmt
from drkit.repository.keys import SecretWrapper
from drkit.repository.manifest import iso
from drkit.storage.local import LocalStorage
from drkit.storage.memory import MemoryStorage
from drkit.verify import verify

DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
LATER = datetime(2026, 12, 1, tzinfo=UTC)  # a "before" past every synthetic day


def wrapper() -> SecretWrapper:
    return SecretWrapper(Secret("correct horse battery staple"), "test key", "key_env")


@pytest.fixture(params=["memory", "local"])
def repo(request, tmp_path):
    if request.param == "memory":
        name = os.urandom(4).hex()
        storage = MemoryStorage(name)
        yield Repository.init(storage, wrapper())
        MemoryStorage.reset(name)
    else:
        (tmp_path / "repo").mkdir()
        yield Repository.init(LocalStorage(tmp_path / "repo"), wrapper())


def record(n: int, pushed: datetime, source: str = "db") -> LogRecord:
    name = f"{n:024X}"
    return LogRecord(source, name, StreamRef(name, 100 + n, f"{n:064x}", []), {"segno": n}, pushed=iso(pushed))


def put_single(repo: Repository, rec: LogRecord) -> str:
    key = fmt.log_key(rec.source, rec.name)
    repo.storage.put(key, repo._seal_json("log", key, rec.to_json()))
    return key


def history(repo: Repository, days: int = 3, per_day: int = 4) -> list[LogRecord]:
    recs = [record(d * per_day + i + 1, DAY0 + timedelta(days=d, hours=i)) for d in range(days) for i in range(per_day)]
    for r in recs:
        put_single(repo, r)
    return recs


def cat_keys(repo: Repository, source: str = "db") -> list[str]:
    return sorted(i.key for i in repo.storage.list(fmt.logcat_prefix(source)))


class CountingGets:
    """Counts GETs per key prefix (wraps the real storage)."""

    def __init__(self, repo: Repository) -> None:
        self.gets: list[str] = []
        real = repo.storage.get

        def get(key: str, *a, **kw):
            self.gets.append(key)
            return real(key, *a, **kw)

        repo.storage.get = get  # type: ignore[method-assign]


def test_seal_one_object_per_day_read_back_and_authoritative(repo):
    recs = history(repo)
    res = repo.seal_log_catalog("db", before=LATER)
    keys = cat_keys(repo)
    assert len(keys) == 3 and sorted(res.written) == keys and res.sealed == 12
    cat = logcat.parse_key(keys[0])
    assert (cat.day, cat.first, cat.last, cat.count) == ("20261101", recs[0].name, recs[3].name, 4)
    # the single records are kept by the writer path (deletion is forget/prune's)
    assert len(list(repo.storage.list(fmt.log_key("db", "")))) == 12

    counter = CountingGets(repo)
    catalog = load_catalog(repo, "db")
    assert [r.to_json() for r in catalog.logs] == [r.to_json() for r in recs]
    assert catalog.damaged == []
    assert not [k for k in counter.gets if k.startswith(fmt.LOG_PREFIX)], "sealed singles must not be read"
    assert len(counter.gets) == 3
    assert [r.name for r in repo.log_records("db")] == [r.name for r in recs]
    assert repo.list_log_names("db") == [r.name for r in recs]


def test_only_complete_days_are_sealed_and_new_singles_stay_single(repo):
    recs = history(repo, days=3)
    res = repo.seal_log_catalog("db", before=DAY0 + timedelta(days=2, hours=1))  # day 3 still open
    assert res.sealed == 8 and len(cat_keys(repo)) == 2
    extra = record(99, DAY0 + timedelta(days=2, hours=9))
    put_single(repo, extra)
    counter = CountingGets(repo)
    catalog = load_catalog(repo, "db")
    assert [r.name for r in catalog.logs] == [r.name for r in recs] + [extra.name]
    assert sorted(k for k in counter.gets if k.startswith(fmt.LOG_PREFIX)) == sorted(
        fmt.log_key("db", r.name) for r in recs[8:] + [extra])
    assert repo.seal_log_catalog("db", before=DAY0 + timedelta(days=2, hours=1)).written == []
    assert repo.seal_log_catalog("db", min_records=6, before=LATER).written == []  # only 5 unsealed
    assert repo.seal_log_catalog("db", before=LATER).sealed == 5


def test_seal_with_delete_replaced_then_everything_still_reads(repo):
    recs = history(repo)
    res = repo.seal_log_catalog("db", before=LATER, delete_replaced=True)
    assert len(res.deleted) == 12 and res.not_deleted == []
    assert list(repo.storage.list(fmt.log_key("db", ""))) == []
    assert [r.to_json() for r in load_catalog(repo, "db").logs] == [r.to_json() for r in recs]
    got = repo.get_log("db", recs[5].name)  # exists only inside a catalog object
    assert got is not None and got.to_json() == recs[5].to_json()
    assert repo.get_log("db", "000000000000000000000077") is None


def test_damaged_catalog_object_is_contained(repo):
    recs = history(repo)
    repo.seal_log_catalog("db", before=LATER)
    day2 = cat_keys(repo)[1]
    blob = bytearray(repo.storage.get(day2))
    blob[-5] ^= 0xFF
    repo.storage.delete(day2)
    repo.storage.put(day2, bytes(blob))
    # its singles still exist: every record is read, the damage is reported with its span
    catalog = load_catalog(repo, "db")
    assert [r.name for r in catalog.logs] == [r.name for r in recs]
    (d,) = catalog.damaged
    assert d.key == day2 and f"{recs[4].name}..{recs[7].name}" in d.error
    assert "read from their single objects" in d.error
    # once the singles of that span are gone, those names are lost -- and only those
    repo.storage.delete_many([fmt.log_key("db", r.name) for r in recs[4:8]])
    catalog = load_catalog(repo, "db")
    assert [r.name for r in catalog.logs] == [r.name for r in recs[:4] + recs[8:]]
    (d,) = catalog.damaged
    assert d.name == recs[4].name and "4 of its 4 records have no single object" in d.error
    assert repo.get_log("db", recs[0].name) is not None


def test_two_catalog_objects_disagreeing_is_damage_naming_both(repo):
    recs = history(repo, days=1)
    repo.seal_log_catalog("db", before=LATER)
    (first,) = cat_keys(repo)
    forged = [recs[0], LogRecord("db", recs[1].name, StreamRef(recs[1].name, 1, "ab" * 32, []), {},
                                 pushed=recs[1].pushed), recs[2], recs[3]]
    other, ours = logcat.write_object(repo, "db", "20261101", forged)
    assert ours and other != first
    catalog = load_catalog(repo, "db")
    assert recs[1].name not in [r.name for r in catalog.logs]
    (d,) = catalog.damaged
    assert first in d.error and other in d.error and d.name == recs[1].name
    with pytest.raises(IntegrityError, match="differs between"):
        repo.log_records("db", [recs[1].name])


def test_single_record_conflicting_with_catalog_is_found_by_verify_and_not_deleted(repo):
    for i in range(3):
        repo.put_log("db", f"{i + 1:024X}", io.BytesIO(os.urandom(1000 + i)))
    repo.seal_log_catalog("db", before=datetime.now(UTC) + timedelta(days=2))
    assert verify(repo).problems == []
    (cat,) = cat_keys(repo)
    name = f"{2:024X}"
    key = fmt.log_key("db", name)
    good = logcat.read_single(repo, "db", name)
    bad = LogRecord("db", name, StreamRef(name, good.stream.size, "cd" * 32, good.stream.chunks), good.metadata,
                    pushed=good.pushed)
    repo.storage.delete(key)
    put_single(repo, bad)
    problems = verify(repo).problems
    assert [p["kind"] for p in problems] == ["logcat"]
    assert key in problems[0]["error"] and cat in problems[0]["error"]
    res = repo.seal_log_catalog("db", before=datetime.now(UTC) + timedelta(days=2), delete_replaced=True)
    assert key not in res.deleted and len(res.deleted) == 2
    assert repo.storage.stat(key) is not None


def test_verify_reports_a_damaged_catalog_objects_span(repo):
    names = [f"{i + 1:024X}" for i in range(3)]
    for n in names:
        repo.put_log("db", n, io.BytesIO(os.urandom(500)))
    repo.seal_log_catalog("db", before=datetime.now(UTC) + timedelta(days=2), delete_replaced=True)
    report = verify(repo)
    assert report.problems == [] and report.log_segments == 3
    (cat,) = cat_keys(repo)
    repo.storage.delete(cat)
    repo.storage.put(cat, b"garbage" * 10)
    (p,) = verify(repo).problems
    assert p["object"] == cat and p["kind"] == "logcat"
    assert f"{names[0]}..{names[-1]}" in p["affects"][0] and "up to 3 have no single object" in p["affects"][0]


def test_two_sealers_race_one_wins_and_both_agree(repo):
    history(repo)
    barrier = threading.Barrier(2)
    real_put = repo.storage.put
    results, errors = [], []

    def put(key, data, **kw):
        if key.startswith(fmt.LOGCAT_PREFIX):
            barrier.wait(timeout=10)
        return real_put(key, data, **kw)

    repo.storage.put = put  # type: ignore[method-assign]

    def run():
        try:
            results.append(repo.seal_log_catalog("db", before=LATER))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(cat_keys(repo)) == 3
    assert len(results) == 2 and sum(len(r.written) for r in results) == 3  # each key won exactly once
    assert sum(len(r.written) + len(r.existing) for r in results) == 6


def test_race_with_a_different_object_under_the_same_key_is_refused(repo):
    recs = history(repo, days=1)
    key = logcat.make_key("db", "20261101", recs)
    other = [recs[0], recs[1], recs[2], record(4, DAY0 + timedelta(hours=5))]  # same names, other pushed
    real_put = repo.storage.put

    def put(k, data, **kw):  # another writer's object lands between our scan and our put
        if k == key:
            real_put(k, repo._seal_json("logcat", k, logcat.encode("db", "20261101", other)), exclusive=True)
        return real_put(k, data, **kw)

    repo.storage.put = put  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match="another writer sealed the span"):
        repo.seal_log_catalog("db", before=LATER)


def test_delete_log_records_rewrites_the_span(repo):
    recs = history(repo)
    repo.seal_log_catalog("db", before=LATER, delete_replaced=True)
    old = cat_keys(repo)
    assert repo.delete_log_records("db", [recs[0].name, recs[5].name, recs[6].name]) == []
    new = cat_keys(repo)
    assert old[2] in new and old[0] not in new and old[1] not in new and len(new) == 3
    left = [r for r in recs if r.name not in {recs[0].name, recs[5].name, recs[6].name}]
    assert [r.to_json() for r in load_catalog(repo, "db").logs] == [r.to_json() for r in left]
    # a whole span removed: its object goes, none replaces it
    assert repo.delete_log_records("db", [r.name for r in recs[8:]]) == []
    assert len(cat_keys(repo)) == 2
    assert repo.list_log_names("db") == [r.name for r in left if r not in recs[8:]]


def test_put_log_of_a_sealed_only_record_is_identical(repo):
    data = os.urandom(3000)
    repo.put_log("db", "000000010000000000000001", io.BytesIO(data))
    repo.seal_log_catalog("db", before=datetime.now(UTC) + timedelta(days=2), delete_replaced=True)
    assert list(repo.storage.list(fmt.log_key("db", ""))) == []
    status, rec = repo.put_log("db", "000000010000000000000001", io.BytesIO(data))
    assert status == "identical" and rec.name == "000000010000000000000001"
    assert list(repo.storage.list(fmt.log_key("db", ""))) == []


def test_put_log_seals_past_the_threshold(repo, monkeypatch):
    monkeypatch.setattr(logcat, "SEAL_CHECK_EVERY", 1)
    monkeypatch.setattr(logcat, "SEAL_THRESHOLD", 6)
    history(repo, days=2, per_day=3)  # 6 singles on days long past
    assert cat_keys(repo) == []
    repo.put_log("db", f"{50:024X}", io.BytesIO(b"x" * 100))
    assert len(cat_keys(repo)) == 2  # the two old days; today's push stays single
    assert len(list(repo.storage.list(fmt.log_key("db", "")))) == 7


def test_day_with_more_than_max_span_is_split(repo, monkeypatch):
    monkeypatch.setattr(logcat, "MAX_SPAN", 3)
    recs = history(repo, days=1, per_day=7)
    repo.seal_log_catalog("db", before=LATER)
    spans = [logcat.parse_key(k) for k in cat_keys(repo)]
    assert sorted(c.count for c in spans) == [1, 3, 3]
    assert [r.name for r in load_catalog(repo, "db").logs] == [r.name for r in recs]
