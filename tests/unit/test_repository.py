"""Core repository round trips on the memory and local backends (pure logic, no servers)."""

from __future__ import annotations

import io
import os
import random

import pytest

from drkit.config import Secret
from drkit.errors import IntegrityError, LogConflict, RepositoryExists, UnsupportedFormat, WrongKey
from drkit.repository import Manifest, Repository
from drkit.repository.keys import SecretWrapper
from drkit.repository.manifest import iso, new_backup_id, utcnow
from drkit.storage.local import LocalStorage
from drkit.storage.memory import MemoryStorage


def wrapper(secret: str = "correct horse battery staple") -> SecretWrapper:
    return SecretWrapper(Secret(secret), "test key", "key_env")


@pytest.fixture(params=["memory", "local"])
def storage(request, tmp_path):
    if request.param == "memory":
        name = os.urandom(4).hex()
        yield MemoryStorage(name)
        MemoryStorage.reset(name)
    else:
        yield LocalStorage(tmp_path / "repo")


def realistic(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"patient", b"record", b"2026-11-26", b"{\"k\": 1}", b"lorem"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" " + str(rng.randint(0, 10**6)).encode() + b"\n"
    return bytes(out[:n])


def backup(repo: Repository, source: str, streams: dict[str, bytes]) -> Manifest:
    session = repo.session()
    refs = [session.write_stream(name, io.BytesIO(data)) for name, data in streams.items()]
    stored = session.finish()
    now = iso(utcnow())
    m = Manifest(new_backup_id(), source, "test", "full", now, now, refs, stored_bytes=stored)
    repo.commit_manifest(m)
    return m


def test_roundtrip_and_dedup(storage):
    repo = Repository.init(storage, wrapper())
    data = realistic(6 * 1024 * 1024) + os.urandom(3 * 1024 * 1024)
    m1 = backup(repo, "db", {"base.tar": data, "empty": b""})
    again = Repository.open(storage, wrapper())
    [loaded] = again.list_manifests("db")
    assert loaded.id == m1.id
    assert again.open_stream(loaded.stream("base.tar")).read() == data
    assert again.open_stream(loaded.stream("empty")).read() == b""
    # A second identical backup stores almost nothing new (just an index-free manifest).
    m2 = backup(again, "db", {"base.tar": data})
    assert m2.stored_bytes == 0
    # Identical data under another source dedups too.
    m3 = backup(again, "other", {"x": data})
    assert m3.stored_bytes == 0
    assert m1.stored_bytes < len(data)  # compressed


def test_init_twice_refused(storage):
    Repository.init(storage, wrapper())
    with pytest.raises(RepositoryExists):
        Repository.init(storage, wrapper())


def test_wrong_key(storage):
    Repository.init(storage, wrapper())
    with pytest.raises(WrongKey):
        Repository.open(storage, wrapper("not the right key at all"))


def test_unknown_version_refused(storage):
    import json

    Repository.init(storage, wrapper())
    doc = json.loads(storage.get("config"))
    doc["config"]["version"] = 99
    storage.put("config", json.dumps(doc).encode(), exclusive=False)
    with pytest.raises(UnsupportedFormat):
        Repository.open(storage, wrapper())


def test_tampered_config_detected(storage):
    import json

    Repository.init(storage, wrapper())
    doc = json.loads(storage.get("config"))
    doc["config"]["chunker"]["avg"] = 4096
    storage.put("config", json.dumps(doc).encode(), exclusive=False)
    with pytest.raises(IntegrityError):
        Repository.open(storage, wrapper())


def _flip(storage, key: str, pos: int) -> None:
    data = bytearray(storage.get(key))
    data[pos % len(data)] ^= 0x01
    storage.put(key, bytes(data), exclusive=False)


@pytest.mark.parametrize("prefix", ["data/", "manifests/"])
def test_flipped_byte_detected_and_named(storage, prefix):
    repo = Repository.init(storage, wrapper())
    data = realistic(2 * 1024 * 1024)
    backup(repo, "db", {"s": data})
    [key] = [i.key for i in storage.list(prefix)]
    _flip(storage, key, 100)
    fresh = Repository.open(storage, wrapper())
    with pytest.raises(IntegrityError) as exc:
        [m] = fresh.list_manifests("db")
        fresh.open_stream(m.stream("s")).read()
    assert key in str(exc.value)


def test_flipped_index_detected(storage):
    repo = Repository.init(storage, wrapper())
    backup(repo, "db", {"s": realistic(100_000)})
    [key] = [i.key for i in storage.list("index/")]
    _flip(storage, key, 40)
    with pytest.raises(IntegrityError) as exc:
        Repository.open(storage, wrapper()).load_index()
    assert key in str(exc.value)


def test_swapped_manifest_rejected(storage):
    repo = Repository.init(storage, wrapper())
    m1 = backup(repo, "db", {"s": b"one" * 1000})
    m2 = backup(repo, "db", {"s": b"two" * 1000})
    k1, k2 = f"manifests/db/{m1.id}", f"manifests/db/{m2.id}"
    b1 = storage.get(k1)
    storage.put(k2, b1, exclusive=False)  # replay manifest 1 under manifest 2's name
    with pytest.raises(IntegrityError) as exc:
        Repository.open(storage, wrapper()).list_manifests("db")
    assert k2 in str(exc.value)


def test_log_push_idempotent_and_conflict(storage):
    repo = Repository.init(storage, wrapper())
    seg = os.urandom(100_000)
    status, rec = repo.put_log("db", "000000010000000000000001", io.BytesIO(seg), {"x": 1})
    assert status == "stored"
    status, _ = repo.put_log("db", "000000010000000000000001", io.BytesIO(seg))
    assert status == "identical"
    with pytest.raises(LogConflict):
        repo.put_log("db", "000000010000000000000001", io.BytesIO(seg[:-1] + b"x"))
    got = repo.get_log("db", "000000010000000000000001")
    assert got is not None and repo.open_stream(got.stream).read() == seg
    assert got.metadata == {"x": 1}


def test_verify_names_corrupt_pack_and_affected_backups(storage):
    from drkit.verify import verify

    repo = Repository.init(storage, wrapper())
    m = backup(repo, "db", {"s": realistic(3 * 1024 * 1024)})
    repo.put_log("db", "000000010000000000000002", io.BytesIO(os.urandom(50_000)))
    clean = verify(Repository.open(storage, wrapper()))
    assert clean.problems == [] and clean.manifests == 1 and clean.log_segments == 1
    pack = sorted(i.key for i in storage.list("data/"))[0]
    _flip(storage, pack, 200)
    report = verify(Repository.open(storage, wrapper()))
    assert report.problems, "a flipped byte in a pack must be found"
    named = {p["object"] for p in report.problems}
    assert pack in named
    affected = {a for p in report.problems for a in p["affects"]}
    assert affected & {f"backup db/{m.id}", "log db/000000010000000000000002"}


def test_flipped_log_record_detected(storage):
    repo = Repository.init(storage, wrapper())
    repo.put_log("db", "000000010000000000000003", io.BytesIO(b"wal" * 1000))
    key = "logs/db/000000010000000000000003"
    _flip(storage, key, 30)
    with pytest.raises(IntegrityError) as exc:
        Repository.open(storage, wrapper()).get_log("db", "000000010000000000000003")
    assert key in str(exc.value)


def test_moved_log_record_rejected(storage):
    repo = Repository.init(storage, wrapper())
    repo.put_log("db", "000000010000000000000003", io.BytesIO(b"wal" * 1000))
    storage.put("logs/db/000000010000000000000004", storage.get("logs/db/000000010000000000000003"))
    with pytest.raises(IntegrityError):
        Repository.open(storage, wrapper()).get_log("db", "000000010000000000000004")


def test_truncated_and_empty_objects_rejected(storage):
    repo = Repository.init(storage, wrapper())
    m = backup(repo, "db", {"s": realistic(500_000)})
    key = f"manifests/db/{m.id}"
    full = storage.get(key)
    for bad in (full[: len(full) // 2], b""):
        storage.put(key, bad, exclusive=False)
        with pytest.raises(IntegrityError) as exc:
            Repository.open(storage, wrapper()).list_manifests("db")
        assert key in str(exc.value)


def test_key_rotation_rewraps_without_rewriting_data(storage):
    repo = Repository.init(storage, wrapper("old key material 123"))
    m = backup(repo, "db", {"s": realistic(1_000_000)})
    data_before = {i.key: i.size for i in storage.list("data/")}
    repo.rotate_key(wrapper("new key material 456"))
    with pytest.raises(WrongKey):
        Repository.open(storage, wrapper("old key material 123"))
    again = Repository.open(storage, wrapper("new key material 456"))
    [loaded] = again.list_manifests("db")
    assert again.open_stream(loaded.stream("s")).read() == realistic(1_000_000)
    assert loaded.id == m.id
    assert {i.key: i.size for i in storage.list("data/")} == data_before
    assert [k["in_use"] for k in again.list_keys()] == [True]


def test_verify_rehashes_what_restores_trust(storage, monkeypatch):
    """A blob holding other bytes than its id names, with a valid GCM tag and zstd checksum, can
    only come from a writer whose self-check did not run: restores trust checksummed frames
    (docs/repository-format.md), so verify must rehash every chunk and name it."""
    import zstandard

    from drkit.repository import blobs
    from drkit.verify import verify

    class Mutating:  # one zstd compressor per call: they are not thread-safe
        def compress(self, data):
            wrong = bytearray(data)
            wrong[10] ^= 0x01
            return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(bytes(wrong))

    repo = Repository.init(storage, wrapper())
    with monkeypatch.context() as m:
        m.setattr(blobs, "_compressor", lambda level: Mutating())
        m.setattr(blobs, "self_check", lambda *a: None)  # the faulty writer
        bad = backup(repo, "db", {"s": realistic(2 * 1024 * 1024)})
    report = verify(Repository.open(storage, wrapper()))
    assert report.problems, "verify must rehash and find the chunk that is not its id"
    assert all("does not match its id" in p["error"] for p in report.problems)
    assert {a for p in report.problems for a in p["affects"]} == {f"backup db/{bad.id}"}
