"""One conformance suite for the storage contract (drkit/storage/base.py), run on every backend.

Backends: local directory, memory, moto (server mode) and versitygw (posix backend), the last two
as real HTTP servers started once per session.  Each test gets a fresh, empty storage.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import (  # noqa: F401 - session fixtures
    MiB,
    fixture_moto_server,
    fixture_versitygw_server,
    make_s3_storage,
)

from drkit.errors import AlreadyExistsError, NotFoundError, StorageError
from drkit.storage.base import Storage
from drkit.storage.local import LocalStorage
from drkit.storage.memory import MemoryStorage
from drkit.storage.retry import RetryingStorage

pytestmark = pytest.mark.integration
BACKENDS = ["local", "memory", "moto", "versitygw"]
Factory = Callable[..., Storage]


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """``make(**s3_options)`` -> a fresh, empty storage of the parametrised backend."""
    kind = request.param

    def factory(**options: Any) -> Storage:
        if kind == "local":
            root = tmp_path / f"repo-{uuid.uuid4().hex[:8]}"
            root.mkdir()
            return LocalStorage(root)
        if kind == "memory":
            name = f"conf-{uuid.uuid4().hex}"
            request.addfinalizer(lambda: MemoryStorage.reset(name))
            return MemoryStorage(name)
        server = request.getfixturevalue(f"{kind}_server")
        return make_s3_storage(server, **options)

    return factory


@pytest.fixture
def store(make: Factory) -> Storage:
    return make()


def test_put_get_stat_roundtrip(store: Storage) -> None:
    keys = {
        "a/b/c.bin": os.urandom(1000),
        "top": b"x",
        "odd key +=%&;.bin": b"\x00\xff" * 7,
        "empty/obj": b"",
    }
    for key, data in keys.items():
        store.put(key, data)
    for key, data in keys.items():
        assert store.get(key) == data
        info = store.stat(key)
        assert info is not None and info.key == key and info.size == len(data)
        assert store.exists(key)


def test_put_accepts_bytes_like(store: Storage) -> None:
    store.put("ba", bytearray(b"abc"))
    store.put("mv", memoryview(b"defg"))
    assert store.get("ba") == b"abc" and store.get("mv") == b"defg"


def test_exclusive_put_conflict_and_identical_success(store: Storage) -> None:
    store.put("lock/x", b"first")
    store.put("lock/x", b"first")  # identical bytes: an ambiguous commit that was applied
    with pytest.raises(AlreadyExistsError):
        store.put("lock/x", b"other")
    with pytest.raises(AlreadyExistsError):
        store.put("lock/x", b"firsT")  # same size, different bytes
    assert store.get("lock/x") == b"first"


def test_non_exclusive_put_replaces(store: Storage) -> None:
    store.put("lock/y", b"one")
    store.put("lock/y", b"two, longer", exclusive=False)
    assert store.get("lock/y") == b"two, longer"
    assert store.stat("lock/y").size == len(b"two, longer")  # type: ignore[union-attr]


def test_ranged_get(store: Storage) -> None:
    data = bytes(range(256)) * 40
    store.put("r", data)
    assert store.get("r", 0, 10) == data[:10]
    assert store.get("r", 100, 1) == data[100:101]
    assert store.get("r", 5000, 5240) == data[5000:]  # exactly to the end
    assert store.get("r", 9000) == data[9000:]  # offset, no length: to the end
    assert store.get("r", 0, len(data)) == data


def test_range_beyond_end_raises_never_short(store: Storage) -> None:
    store.put("r", b"0123456789")
    with pytest.raises(StorageError):
        store.get("r", 5, 10)


def test_missing_objects(store: Storage) -> None:
    assert store.stat("nope") is None
    assert not store.exists("nope")
    with pytest.raises(NotFoundError):
        store.get("nope")
    with pytest.raises(NotFoundError):
        store.get("nope", 3, 4)
    store.delete("nope")  # deleting a missing object is not an error
    assert store.delete_many(["nope", "nope/2"]) == []


def test_list_prefixes(store: Storage) -> None:
    for key in ["a/1", "a/2", "a/sub/3", "ab/4", "b/5"]:
        store.put(key, key.encode())

    def names(prefix: str) -> set[str]:
        return {i.key for i in store.list(prefix)}

    assert names("") == {"a/1", "a/2", "a/sub/3", "ab/4", "b/5"}
    assert names("a/") == {"a/1", "a/2", "a/sub/3"}
    assert names("a") == {"a/1", "a/2", "a/sub/3", "ab/4"}
    assert names("a/sub/") == {"a/sub/3"}
    assert names("zzz/") == set()
    sizes = {i.key: i.size for i in store.list("a/")}
    assert sizes == {"a/1": 3, "a/2": 3, "a/sub/3": 7}


def test_delete_and_delete_many(store: Storage) -> None:
    for i in range(5):
        store.put(f"d/{i}", b"x")
    store.delete("d/0")
    assert store.stat("d/0") is None
    assert store.delete_many(["d/1", "d/2", "d/missing"]) == []
    assert {i.key for i in store.list("d/")} == {"d/3", "d/4"}


def test_list_and_delete_many_beyond_1000(store: Storage) -> None:
    keys = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.put("other/x", b"x")
    listed = [i.key for i in store.list("many/")]
    assert sorted(listed) == keys  # every page, no duplicates
    assert store.delete_many(keys) == []
    assert list(store.list("many/")) == []
    assert [i.key for i in store.list("")] == ["other/x"]


def test_large_put_multipart(make: Factory) -> None:
    store = make(multipart_threshold=5 * MiB, part_size=5 * MiB, max_concurrency=3)
    data = os.urandom(12 * MiB + 12345)
    store.put("packs/big", data)
    assert store.stat("packs/big").size == len(data)  # type: ignore[union-attr]
    assert store.get("packs/big") == data
    boundary = 5 * MiB
    assert store.get("packs/big", boundary - 10, 20) == data[boundary - 10 : boundary + 10]
    store.put("packs/big", data)  # identical re-put: success
    with pytest.raises(AlreadyExistsError):
        store.put("packs/big", data[:-1] + bytes([data[-1] ^ 1]))
    assert store.get("packs/big", len(data) - 100, 100) == data[-100:]


def test_put_is_atomic_for_readers(store: Storage) -> None:
    data = os.urandom(3 * MiB)
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(len(store.get("atomic")))
            except NotFoundError:
                pass

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        store.put("atomic", data)
        store.put("atomic", data[::-1], exclusive=False)
    finally:
        stop.set()
        thread.join()
    assert all(n == len(data) for n in seen)
    assert store.get("atomic") == data[::-1]


def test_now_and_capabilities(store: Storage) -> None:
    caps = store.capabilities
    assert caps.conditional_create
    wrapped = RetryingStorage(store)
    assert wrapped.capabilities == caps
    now = store.now()
    if caps.server_time:
        assert now is not None and now.tzinfo is not None
        assert abs(now - datetime.now(UTC)) < timedelta(minutes=5)
    else:
        assert now is None


def test_retrying_wrapper_passes_contract_errors_through(store: Storage) -> None:
    wrapped = RetryingStorage(store, attempts=2, base_delay=0.001)
    wrapped.put("w", b"1")
    with pytest.raises(AlreadyExistsError):
        wrapped.put("w", b"2")
    with pytest.raises(NotFoundError):
        wrapped.get("missing")
    assert [i.key for i in wrapped.list("w")] == ["w"]
