"""drkit prune: mark -> grace -> delete, plausibility refusals, writer rescue, lock races, crashes.

Pure core logic on the memory and local backends (no datastore involved).  The storage clock is
faked by replacing ``repo.server_time`` on the instance (memory/local storages have no clock).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from drkit.config import Secret
from drkit.errors import ConfigError, IntegrityError, LockedError
from drkit.prune import PruneLock, parse_duration, parse_size, prune
from drkit.repository import Manifest, Repository, crashpoints, leases
from drkit.repository import format as fmt
from drkit.repository import prunemarks as pm
from drkit.repository.keys import SecretWrapper
from drkit.repository.manifest import iso, new_backup_id
from drkit.storage.base import Storage
from drkit.storage.local import LocalStorage
from drkit.storage.memory import MemoryStorage

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def wrapper() -> SecretWrapper:
    return SecretWrapper(Secret("prune test key"), "test key", "key_env")


@pytest.fixture(params=["memory", "local"])
def storage(request, tmp_path) -> Iterator[Storage]:
    if request.param == "memory":
        name = os.urandom(4).hex()
        yield MemoryStorage(name)
        MemoryStorage.reset(name)
    else:
        (tmp_path / "repo").mkdir()
        yield LocalStorage(tmp_path / "repo")


@pytest.fixture
def mem() -> Iterator[Storage]:
    name = os.urandom(4).hex()
    yield MemoryStorage(name)
    MemoryStorage.reset(name)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_repo(storage: Storage, clock: Clock | None = None) -> tuple[Repository, Clock]:
    clock = clock or Clock()
    Repository.init(storage, wrapper())
    return reopen(storage, clock), clock


def reopen(storage: Storage, clock: Clock) -> Repository:
    repo = Repository.open(storage, wrapper())
    repo.pack_size = 1  # one chunk a pack: many packs from little data, none shared by two streams
    repo.server_time = clock  # type: ignore[method-assign]
    return repo


def _rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def backup(repo: Repository, source: str, data: dict[str, bytes], *, commit: bool = True) -> Manifest:
    session = repo.session()
    refs = [session.write_stream(name, io.BytesIO(d)) for name, d in data.items()]
    stored = session.finish()
    now = iso(repo.server_time())
    m = Manifest(new_backup_id(repo.server_time()), source, "test", "full", now, now, refs, stored_bytes=stored)
    if commit:
        repo.commit_manifest(m)
    return m


def commit_only(repo: Repository, m: Manifest, names: list[str]) -> Manifest:
    """Commit ``m`` with only the streams ``names`` (the others stay unreferenced)."""
    m.streams = [s for s in m.streams if s.name in names]
    repo.commit_manifest(m)
    return m


def packs_of(m: Manifest) -> set[str]:
    return {str(c[1]) for s in m.streams for c in s.chunks}


def listed_packs(storage: Storage) -> set[str]:
    return {i.key.rsplit("/", 1)[-1] for i in storage.list(fmt.DATA_PREFIX)}


def assert_reads_back(repo: Repository, expect: dict[str, dict[str, bytes]]) -> None:
    fresh = Repository.open(repo.storage, wrapper())
    by_id = {m.id: m for m in fresh.list_manifests()}
    for backup_id, streams in expect.items():
        for name, data in streams.items():
            assert fresh.open_stream(by_id[backup_id].stream(name)).read() == data, (backup_id, name)


# -- parsing -------------------------------------------------------------------------------------


def test_parse_duration_and_size() -> None:
    assert parse_duration("24h") == DAY
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("0") == timedelta(0)
    assert parse_duration("7d") == timedelta(days=7)
    for bad in ("24", "abc", "-1h", ""):
        with pytest.raises(ConfigError, match="--grace"):
            parse_duration(bad)
    assert parse_size("2G") == 2 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("100") == 100
    with pytest.raises(ConfigError, match="--max-repack-size"):
        parse_size("lots")


# -- mark, grace, delete ----------------------------------------------------------------------


def test_unreferenced_marked_then_deleted_after_grace_referenced_kept(storage: Storage) -> None:
    repo, clock = make_repo(storage)
    keep = {"base.tar": _rand(700_000, 1)}
    m1 = backup(repo, "db", keep)
    both = backup(repo, "db", {"live": _rand(600_000, 2), "dead": _rand(600_000, 3)}, commit=False)
    dead = {str(c[1]) for c in both.stream("dead").chunks}
    m2 = commit_only(repo, both, ["live"])
    orphan = backup(repo, "db", {"x": _rand(500_000, 4)}, commit=False)  # a crashed backup
    garbage = dead | packs_of(orphan)
    referenced = packs_of(m1) | packs_of(m2)
    assert garbage and not garbage & referenced
    assert garbage | referenced == listed_packs(storage)

    first = prune(repo)
    assert sorted(first.marked) == sorted(fmt.pack_key(p) for p in garbage)
    assert first.deleted == [] and listed_packs(storage) == garbage | referenced
    assert len(list(storage.list(pm.MARKS_PREFIX))) == 1

    clock.advance(timedelta(hours=23))
    second = prune(repo)
    assert second.deleted == [] and second.marked == []
    assert {w["key"] for w in second.waiting} == {fmt.pack_key(p) for p in garbage}

    clock.advance(timedelta(hours=2))
    dry = prune(repo, dry_run=True)
    assert sorted(dry.deleted) == sorted(fmt.pack_key(p) for p in garbage)
    assert listed_packs(storage) == garbage | referenced  # dry run changed nothing
    third = prune(repo)
    assert sorted(third.deleted) == sorted(fmt.pack_key(p) for p in garbage)
    assert third.deleted_bytes > 0 and third.indexes_rewritten  # the shared index lost its dead pack
    assert listed_packs(storage) == referenced
    assert list(storage.list(pm.MARKS_PREFIX)) == []
    # nothing left that names a deleted pack; the chunk map still places every live chunk
    index = Repository.open(storage, wrapper()).load_index(refresh=True)
    assert index.packs() == referenced
    assert_reads_back(repo, {m1.id: keep, m2.id: {"live": _rand(600_000, 2)}})
    assert prune(repo).deleted == [] and prune(repo).marked == []


def test_grace_zero_marks_and_deletes_in_one_run(storage: Storage) -> None:
    repo, _ = make_repo(storage)
    m = backup(repo, "db", {"a": _rand(400_000, 5)})
    orphan = backup(repo, "db", {"b": _rand(400_000, 6)}, commit=False)
    report = prune(repo, grace=timedelta(0))
    assert sorted(report.deleted) == sorted(fmt.pack_key(p) for p in packs_of(orphan))
    assert listed_packs(storage) == packs_of(m)
    assert_reads_back(repo, {m.id: {"a": _rand(400_000, 5)}})


def test_grace_zero_refused_while_a_writer_lease_is_live(mem: Storage) -> None:
    repo, clock = make_repo(mem)
    orphan = backup(repo, "db", {"b": _rand(300_000, 7)}, commit=False)
    lease = leases.acquire(repo, "job", "db", 600, "backup of db")
    with pytest.raises(LockedError, match="leases/job/db"):
        prune(repo, grace=timedelta(0))
    assert listed_packs(mem) == packs_of(orphan)
    assert prune(repo).marked  # with a grace period a live writer does not stop marking
    clock.advance(timedelta(minutes=11))  # the writer's lease is stale now
    assert lease and sorted(prune(repo, grace=timedelta(0)).deleted) == sorted(
        fmt.pack_key(p) for p in packs_of(orphan))


def test_live_read_lease_defers_deletion(mem: Storage) -> None:
    repo, clock = make_repo(mem)
    orphan = backup(repo, "db", {"b": _rand(300_000, 8)}, commit=False)
    prune(repo)
    clock.advance(DAY + timedelta(minutes=1))
    lease = leases.acquire(repo, "read", "restore-1", 600, "restore")
    report = prune(repo)
    assert report.deleted == [] and any("read lease" in n for n in report.notes)
    assert listed_packs(mem) == packs_of(orphan)
    leases.release(repo, lease)
    assert sorted(prune(repo).deleted) == sorted(fmt.pack_key(p) for p in packs_of(orphan))


# -- refusals --------------------------------------------------------------------------------------


class Dropping(Storage):
    """Delegates to ``inner`` but leaves out of ``list()`` the keys ``drop`` says to."""

    def __init__(self, inner: Storage, drop) -> None:
        self.inner, self.drop, self.url = inner, drop, inner.url

    def put(self, key, data, *, exclusive=True):
        self.inner.put(key, data, exclusive=exclusive)

    def get(self, key, offset=0, length=None):
        return self.inner.get(key, offset, length)

    def stat(self, key):
        return self.inner.stat(key)

    def list(self, prefix=""):
        return (i for i in self.inner.list(prefix) if not self.drop(i.key))

    def delete(self, key):
        self.inner.delete(key)

    def delete_many(self, keys):
        return self.inner.delete_many(keys)


def test_implausible_listing_is_refused_and_nothing_deleted(mem: Storage) -> None:
    repo, clock = make_repo(mem)
    m = backup(repo, "db", {"a": _rand(500_000, 9)})
    orphan = backup(repo, "db", {"b": _rand(500_000, 10)}, commit=False)
    everything = listed_packs(mem)
    one_live = sorted(packs_of(m))[0]
    one_dead = sorted(packs_of(orphan))[0]
    cases = {
        "not in the data/ listing": lambda k: k.endswith(one_live),  # a referenced pack missing
        "data/ listing is empty": lambda k: k.startswith(fmt.DATA_PREFIX),
        "names pack": lambda k: k.endswith(one_dead),  # an index names an unlisted pack
    }
    for message, drop in cases.items():
        broken = Repository.open(Dropping(mem, drop), wrapper())
        broken.server_time = clock  # type: ignore[method-assign]
        with pytest.raises(IntegrityError, match=message) as err:
            prune(broken, grace=timedelta(0))
        assert err.value.exit_code == 5
        assert listed_packs(mem) == everything, message
        assert list(mem.list(pm.MARKS_PREFIX)) == []
    assert_reads_back(repo, {m.id: {"a": _rand(500_000, 9)}})


def test_damaged_manifest_refuses_to_delete_anything(storage: Storage) -> None:
    repo, _ = make_repo(storage)
    m = backup(repo, "db", {"a": _rand(300_000, 11)})
    backup(repo, "db", {"b": _rand(300_000, 12)}, commit=False)
    key = fmt.manifest_key("db", m.id)
    data = bytearray(storage.get(key))
    data[40] ^= 0xFF
    storage.delete(key)
    storage.put(key, bytes(data))
    before = listed_packs(storage)
    with pytest.raises(IntegrityError, match="manifests of source db") as err:
        prune(repo, grace=timedelta(0))
    assert err.value.exit_code == 5
    assert listed_packs(storage) == before


def test_refused_delete_is_reported_and_the_run_continues(mem: Storage) -> None:
    """A delete the storage refuses (S3 Object Lock retention) is reported as kept; no error."""
    repo, clock = make_repo(mem)
    orphan = sorted(packs_of(backup(repo, "db", {"b": _rand(300_000, 13), "c": _rand(300_000, 22)},
                                    commit=False)))
    assert len(orphan) >= 2
    locked = fmt.pack_key(orphan[0])

    class Locked(Dropping):
        def delete_many(self, keys):
            keys = list(keys)
            return [k for k in keys if k == locked] + self.inner.delete_many([k for k in keys if k != locked])

    repo2 = Repository.open(Locked(mem, lambda k: False), wrapper())
    repo2.server_time = clock  # type: ignore[method-assign]
    report = prune(repo2, grace=timedelta(0))
    assert [k["key"] for k in report.kept] == [locked] and "kept" in report.kept[0]["why"]
    assert listed_packs(mem) == {orphan[0]}
    assert locked not in report.deleted and len(report.deleted) == len(orphan) - 1
    # the kept pack has no index now, so the next run does not refuse: it marks it again
    again = prune(repo, grace=timedelta(0))
    assert again.deleted == [locked] and listed_packs(mem) == set()


# -- writers ---------------------------------------------------------------------------------------


def test_writer_reusing_a_marked_pack_unmarks_it_and_its_backup_restores(storage: Storage) -> None:
    repo, clock = make_repo(storage)
    data = {"a": _rand(600_000, 14)}
    old = backup(repo, "db", data)
    repo.delete_manifests("db", [old.id])  # forget: its packs are unreferenced now
    writer = reopen(storage, clock)
    session = writer.session()  # a backup starts: it loads the index, packs not yet marked
    assert prune(repo).marked
    clock.advance(timedelta(hours=2))
    ref = session.write_stream("a", io.BytesIO(data["a"]))
    assert session.reused_packs == packs_of(old)
    session.finish()  # rescues the marked packs: un-marks written before the commit
    assert len(list(storage.list(pm.UNMARK_PREFIX))) == len(packs_of(old))
    clock.advance(DAY)  # the mark has ripened, the commit has not happened yet
    report = prune(repo)
    assert report.deleted == [] and listed_packs(storage) >= packs_of(old)
    now = iso(clock())
    m = Manifest(new_backup_id(clock()), "db", "test", "full", now, now, [ref])
    writer.commit_manifest(m)
    clock.advance(2 * DAY)
    prune(repo)
    final = prune(repo)
    assert final.deleted == [] and listed_packs(storage) == packs_of(old)
    assert list(storage.list(pm.UNMARK_PREFIX)) == [] and list(storage.list(pm.MARKS_PREFIX)) == []
    assert_reads_back(repo, {m.id: data})


def test_writer_past_rescue_deadline_does_not_commit(mem: Storage) -> None:
    repo, clock = make_repo(mem)
    data = {"a": _rand(300_000, 15)}
    old = backup(repo, "db", data)
    repo.delete_manifests("db", [old.id])
    session = reopen(mem, clock).session()  # started before the mark, runs longer than grace / 2
    prune(repo)
    clock.advance(timedelta(hours=13))  # past unmark_by (marked + grace / 2)
    session.write_stream("a", io.BytesIO(data["a"]))
    with pytest.raises(IntegrityError, match="may be deleting now"):
        session.finish()
    assert list(mem.list(pm.UNMARK_PREFIX)) == []


def test_backup_started_after_a_mark_stores_the_chunks_again(mem: Storage) -> None:
    """A new backup does not dedup against marked packs: it never has to rescue them, so it
    cannot fail however late it finishes, and the marked packs still go."""
    repo, clock = make_repo(mem)
    data = {"a": _rand(300_000, 42)}
    old = backup(repo, "db", data)
    repo.delete_manifests("db", [old.id])
    prune(repo)
    clock.advance(timedelta(hours=20))
    session = reopen(mem, clock).session()
    ref = session.write_stream("a", io.BytesIO(data["a"]))
    assert session.reused_packs == set() and session.chunks_new >= 1
    session.finish()
    now = iso(clock())
    m = Manifest(new_backup_id(clock()), "db", "test", "full", now, now, [ref])
    repo.commit_manifest(m)
    clock.advance(timedelta(hours=5))
    assert sorted(prune(repo).deleted) == sorted(fmt.pack_key(p) for p in packs_of(old))
    assert listed_packs(mem) == packs_of(m)
    assert_reads_back(repo, {m.id: data})


def test_reused_pack_deleted_before_commit_fails_the_commit(storage: Storage) -> None:
    repo, clock = make_repo(storage)
    data = {"a": _rand(300_000, 16)}
    old = backup(repo, "db", data)
    repo.delete_manifests("db", [old.id])
    session = reopen(storage, clock).session()  # loads the index while the packs still exist
    prune(repo, grace=timedelta(0))
    prune(repo, grace=timedelta(0))  # the second run removes the spent mark
    assert not listed_packs(storage) & packs_of(old)
    session.write_stream("a", io.BytesIO(data["a"]))
    with pytest.raises(IntegrityError, match="is gone") as err:
        session.finish()
    assert err.value.key == fmt.pack_key(sorted(packs_of(old))[0])


# -- the lock ------------------------------------------------------------------------------------


def test_two_pruners_race_exactly_one_proceeds(mem: Storage) -> None:
    repo, _ = make_repo(mem)
    for _ in range(1000):  # the issue asks for 1,000 races
        barrier = threading.Barrier(2)
        won: list[PruneLock] = []
        lost: list[Exception] = []

        def contend(barrier: threading.Barrier = barrier, won: list[PruneLock] = won,
                    lost: list[Exception] = lost) -> None:
            lock = PruneLock(repo)
            barrier.wait()
            try:
                lock.acquire()
                won.append(lock)
            except LockedError as exc:
                lost.append(exc)

        threads = [threading.Thread(target=contend) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 1, (won, lost)
        won[0].release()


def test_prune_while_another_runs_is_locked(mem: Storage) -> None:
    repo, _ = make_repo(mem)
    inner: list[Exception] = []

    def second() -> None:
        try:
            prune(repo)
        except LockedError as exc:
            inner.append(exc)

    prune(repo, lock_acquired=second)
    assert len(inner) == 1 and inner[0].exit_code == 6
    prune(repo)  # released: the next run proceeds


def test_holder_paused_past_its_ttl_aborts_before_deleting(mem: Storage) -> None:
    repo, clock = make_repo(mem)
    orphan = packs_of(backup(repo, "db", {"b": _rand(300_000, 17)}, commit=False))
    with pytest.raises(leases.LeaseLost, match="paused"):
        prune(repo, grace=timedelta(0), ttl=60, lock_acquired=lambda: clock.advance(timedelta(seconds=61)))
    assert listed_packs(mem) == orphan

    taken: list[PruneLock] = []

    def paused_and_taken_over() -> None:
        clock.advance(timedelta(seconds=61))
        other = PruneLock(repo, ttl=60)
        other.acquire()  # the paused holder's lock is stale: another pruner takes over
        taken.append(other)
        clock.advance(timedelta(seconds=-30))  # the first holder's own renewal is within ttl

    with pytest.raises(leases.LeaseLost):
        prune(repo, grace=timedelta(0), ttl=60, lock_acquired=paused_and_taken_over)
    assert listed_packs(mem) == orphan
    taken[0].release()


# -- crashes ---------------------------------------------------------------------------------------

STEPS = ["prune.after_mark", "prune.after_index_rewrite", "prune.after_index_delete",
         "prune.after_pack_delete", "prune.after_cleanup"]


class Crash(BaseException):
    pass


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_every_mutating_step_then_rerun_converges(mem: Storage, step: str, monkeypatch) -> None:
    repo, clock = make_repo(mem)
    keep = {"live": _rand(500_000, 18)}
    both = backup(repo, "db", {**keep, "dead": _rand(500_000, 19)}, commit=False)
    m1 = commit_only(repo, both, ["live"])
    m2data = {"x": _rand(400_000, 20)}
    m2 = backup(repo, "other", m2data)
    backup(repo, "db", {"y": _rand(300_000, 21)}, commit=False)
    referenced = packs_of(m1) | packs_of(m2)
    prune(repo)  # marks
    clock.advance(DAY + timedelta(minutes=1))
    backup(repo, "db", {"z": _rand(300_000, 23)}, commit=False)  # new garbage: this run marks too

    def hit(name: str) -> None:
        if name == step:
            raise Crash(name)

    monkeypatch.setattr(crashpoints, "hit", hit)
    monkeypatch.setattr(PruneLock, "release", lambda self: None)  # a killed process releases nothing
    with pytest.raises(Crash):
        prune(repo)
    monkeypatch.undo()
    assert listed_packs(mem) >= referenced
    assert_reads_back(repo, {m1.id: keep, m2.id: m2data})
    with pytest.raises(LockedError):
        prune(repo)  # the dead holder's lock is honoured until its TTL passes
    clock.advance(timedelta(minutes=11))
    prune(repo)
    clock.advance(DAY + timedelta(minutes=1))
    prune(repo)
    assert listed_packs(mem) == referenced
    last = prune(repo)
    assert last.deleted == [] and last.marked == []
    assert Repository.open(mem, wrapper()).load_index(refresh=True).packs() == referenced
    assert_reads_back(repo, {m1.id: keep, m2.id: m2data})


_CHILD = """
import sys
from datetime import timedelta
from drkit.config import Secret
from drkit.prune import prune
from drkit.repository import Repository
from drkit.repository.keys import SecretWrapper
from drkit.storage.local import LocalStorage
repo = Repository.open(LocalStorage(sys.argv[1]), SecretWrapper(Secret("prune test key"), "test key", "key_env"))
prune(repo, grace=timedelta(0))
"""


@pytest.mark.parametrize("step", ["prune.after_index_rewrite", "prune.after_index_delete", "prune.after_pack_delete"])
def test_sigkill_of_a_real_prune_process_then_rerun_converges(tmp_path, step: str) -> None:
    import signal
    import subprocess
    import sys

    root = tmp_path / "repo"
    root.mkdir()
    storage = LocalStorage(root)
    repo, clock = make_repo(storage)
    clock.now = datetime.now(UTC)
    keep = {"live": _rand(400_000, 30)}
    both = backup(repo, "db", {**keep, "dead": _rand(400_000, 31), "dead2": _rand(300_000, 32)}, commit=False)
    m = commit_only(repo, both, ["live"])
    env = {**os.environ, "DRKIT_CRASH_AT": step}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert listed_packs(storage) >= packs_of(m)
    assert_reads_back(repo, {m.id: keep})
    clock.now = datetime.now(UTC)
    prune(repo, grace=timedelta(0))  # the killed holder's lock is free: its process is gone
    assert listed_packs(storage) == packs_of(m)
    assert Repository.open(storage, wrapper()).load_index(refresh=True).packs() == packs_of(m)
    assert_reads_back(repo, {m.id: keep})


def test_dry_run_writes_nothing(mem: Storage) -> None:
    repo, _ = make_repo(mem)
    orphan = packs_of(backup(repo, "db", {"b": _rand(300_000, 40)}, commit=False))
    before = sorted(i.key for i in mem.list())
    report = prune(repo, grace=timedelta(0), dry_run=True)
    assert sorted(report.deleted) == sorted(fmt.pack_key(p) for p in orphan) and report.deleted_bytes > 0
    assert sorted(i.key for i in mem.list()) == before
    assert "would delete 1 pack(s)" in report.text()


def test_damaged_mark_is_ignored_by_writers_and_replaced_by_prune(mem: Storage) -> None:
    repo, clock = make_repo(mem)
    data = {"a": _rand(300_000, 41)}
    old = backup(repo, "db", data)
    repo.delete_manifests("db", [old.id])
    prune(repo)
    [mark] = [i.key for i in mem.list(pm.MARKS_PREFIX)]
    raw = bytearray(mem.get(mark))
    raw[-3] ^= 0x01
    mem.delete(mark)
    mem.put(mark, bytes(raw))
    clock.advance(DAY + timedelta(minutes=1))
    session = reopen(mem, clock).session()
    session.write_stream("a", io.BytesIO(data["a"]))
    session.finish()  # the damaged mark cannot stop a backup
    report = prune(repo)
    assert report.deleted == [] and any(mark in n for n in report.notes)
    assert sorted(report.marked) == sorted(fmt.pack_key(p) for p in packs_of(old))  # marked afresh
    assert mark not in {i.key for i in mem.list(pm.MARKS_PREFIX)}
    assert listed_packs(mem) == packs_of(old)


@pytest.mark.parametrize("seed", range(12))
def test_backups_in_flight_and_prune_interleaved_never_lose_a_committed_chunk(mem: Storage, seed: int) -> None:
    """Random interleavings of backups that straddle prune runs, forgets, crashed backups and
    clock jumps: every committed backup reads back, and a backup whose re-used pack was deleted
    under it fails before committing instead of committing a reference to a missing pack."""
    import random

    rng = random.Random(seed)
    repo, clock = make_repo(mem)
    pool = [_rand(280_000, 100 + i) for i in range(5)]
    committed: dict[str, dict[str, bytes]] = {}
    in_flight: list[tuple[object, Repository]] = []
    for _ in range(14):
        op = rng.choice(["start", "start", "finish", "forget", "crash", "prune", "prune", "jump"])
        if op == "start":
            writer = reopen(mem, clock)
            in_flight.append((writer.session(), writer))
        elif op == "finish" and in_flight:
            session, writer = in_flight.pop(rng.randrange(len(in_flight)))
            data = {f"s{i}": pool[i] for i in rng.sample(range(len(pool)), 2)}
            refs = [session.write_stream(n, io.BytesIO(d)) for n, d in data.items()]  # type: ignore[attr-defined]
            try:
                session.finish()  # type: ignore[attr-defined]
            except IntegrityError as exc:
                assert "run the backup again" in str(exc)
                continue
            now = iso(clock())
            m = Manifest(new_backup_id(clock()), "db", "test", "full", now, now, refs)
            writer.commit_manifest(m)
            committed[m.id] = data
        elif op == "forget" and committed:
            victim = rng.choice(sorted(committed))
            repo.delete_manifests("db", [victim])
            del committed[victim]
        elif op == "crash":
            backup(repo, "db", {"x": pool[rng.randrange(len(pool))] + b"tail"}, commit=False)
        elif op == "prune":
            prune(repo, grace=timedelta(hours=rng.choice([6, 24])))
        elif op == "jump":
            clock.advance(timedelta(hours=rng.choice([1, 7, 13, 25])))
        assert_reads_back(repo, committed)
    for session, _ in in_flight:
        session.close()  # type: ignore[attr-defined]


def test_cli_prune_exit_codes_and_json(tmp_path, capsys) -> None:
    """The command as the lead registers it (``cli.add_command``), through drkit's exit-code mapping."""
    from drkit.cli.main import cli, main
    from drkit.cli.prune import prune as prune_command

    added = "prune" not in cli.commands
    cli.add_command(prune_command)
    try:
        _cli_checks(tmp_path, capsys, main)
    finally:
        if added:  # leave the global command group as it was (docs/cli.md is generated from it)
            cli.commands.pop("prune", None)


def _cli_checks(tmp_path, capsys, main) -> None:
    import json

    import yaml

    key = tmp_path / "master.key"
    key.write_text(os.urandom(32).hex())
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(yaml.safe_dump({"repository": {"url": f"file://{tmp_path / 'repo'}"},
                                   "encryption": {"key_file": str(key)}, "sources": {}}))
    (tmp_path / "repo").mkdir()

    def run(*args: str) -> int:
        try:
            main(["--config", str(cfg), *args])
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert run("init") == 0
    capsys.readouterr()
    assert run("prune", "--grace", "soon") == 2
    assert "--grace 'soon'" in capsys.readouterr().err
    assert run("prune", "--dry-run", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["deleted"] == [] and report["packs_total"] == 0
    assert run("prune", "--grace", "0") == 0
    assert "delete 0 pack(s)" in capsys.readouterr().out
