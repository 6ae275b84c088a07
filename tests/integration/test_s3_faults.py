"""S3 failure behaviours (RELIABILITY.md, "S3 behaviours") against a real moto server.

Faults are injected in the client (botocore ``before-send`` hook, :class:`S3Faults`) or by a
TCP proxy that accepts and never answers (:class:`StallProxy`).
"""

from __future__ import annotations

import os
import re
import time

import pytest
from s3_fixtures import (  # noqa: F401 - session fixture
    MiB,
    S3Faults,
    StallProxy,
    fixture_moto_server,
    make_s3_storage,
    response,
)

from drkit.errors import AlreadyExistsError, TransientStorageError
from drkit.sandbox.s3 import S3Server
from drkit.storage.retry import RetryingStorage
from drkit.storage.s3 import S3Storage

pytestmark = pytest.mark.integration


def fast_retry(storage: S3Storage, attempts: int = 8, deadline: float = 30.0) -> RetryingStorage:
    return RetryingStorage(storage, attempts=attempts, base_delay=0.005, max_delay=0.05, deadline=deadline)


@pytest.fixture
def faults() -> S3Faults:
    return S3Faults()


@pytest.fixture
def s3(moto_server: S3Server, faults: S3Faults) -> S3Storage:
    return make_s3_storage(moto_server, client_hook=faults.install)


# (a) ambiguous commit -----------------------------------------------------------------------


def test_ambiguous_put_commit_is_success(s3: S3Storage, faults: S3Faults) -> None:
    faults.add("PutObject", faults.ambiguous, times=1)
    with pytest.raises(TransientStorageError):
        s3.put("wal/000001", b"segment")  # the server has it; the client saw a 500
    assert s3.get("wal/000001") == b"segment"
    faults.clear()
    faults.calls.clear()
    faults.add("PutObject", faults.ambiguous, times=1)
    fast_retry(s3).put("wal/000002", b"segment 2")  # 500, then 412 on retry -> HEAD compare
    assert faults.calls == ["PutObject", "PutObject", "HeadObject"]
    assert s3.get("wal/000002") == b"segment 2"


def test_precondition_failed_with_different_content_is_conflict(s3: S3Storage, faults: S3Faults) -> None:
    s3.put("wal/000003", b"theirs")
    faults.add("PutObject", faults.ambiguous, times=1)  # our PUT is refused (412) upstream
    with pytest.raises(TransientStorageError):
        s3.put("wal/000003", b"ours!!")
    with pytest.raises(AlreadyExistsError):
        fast_retry(s3).put("wal/000003", b"ours!!")
    assert s3.get("wal/000003") == b"theirs"


def test_ambiguous_multipart_complete_is_success(moto_server: S3Server, faults: S3Faults) -> None:
    s3 = make_s3_storage(
        moto_server, client_hook=faults.install, multipart_threshold=5 * MiB, part_size=5 * MiB
    )
    data = os.urandom(11 * MiB)
    s3._conditional_complete()  # probe before arming the fault
    faults.add("CompleteMultipartUpload", faults.ambiguous, times=1)
    fast_retry(s3).put("packs/p1", data)
    assert s3.get("packs/p1") == data
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_complete_multipart_200_with_error_body_fails_and_aborts(
    moto_server: S3Server, faults: S3Faults
) -> None:
    s3 = make_s3_storage(
        moto_server, client_hook=faults.install, multipart_threshold=5 * MiB, part_size=5 * MiB
    )
    s3._conditional_complete()
    body = b'<?xml version="1.0"?><Error><Code>InternalError</Code><Message>x</Message></Error>'
    faults.add("CompleteMultipartUpload", lambda req: response(req, 200, body))
    with pytest.raises(TransientStorageError):
        s3.put("packs/p2", os.urandom(6 * MiB))
    assert s3.stat("packs/p2") is None
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


# (b) DeleteObjects with per-key errors ------------------------------------------------------


def test_delete_many_reports_per_key_errors(s3: S3Storage, faults: S3Faults) -> None:
    keys = [f"old/{i}" for i in range(6)]
    for key in keys:
        s3.put(key, b"x")
    denied = {"old/1", "old/4"}

    def partial(request, real):  # type: ignore[no-untyped-def]
        errors = (
            "".join(
                f"<Error><Key>{s3.prefix}{k}</Key><Code>AccessDenied</Code>"
                f"<Message>Access Denied</Message></Error>"
                for k in sorted(denied)
            )
            + f"<Error><Key>{s3.prefix}old/5</Key><Code>NoSuchKey</Code><Message>m</Message></Error>"
        )
        body = real.content
        body = re.sub(rb"<Deleted>.*?</Deleted>", b"", body, flags=re.S)
        body = body.replace(b"</DeleteResult>", errors.encode() + b"</DeleteResult>")
        return response(request, 200, body)

    faults.add("DeleteObjects", faults.rewrite(partial), times=1)
    assert sorted(s3.delete_many(keys)) == sorted(denied)


def test_delete_many_batches_of_1000(s3: S3Storage, faults: S3Faults) -> None:
    keys = [f"k/{i}" for i in range(2500)]
    assert s3.delete_many(keys) == []
    assert faults.calls.count("DeleteObjects") == 3


# (c) truncated GET --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["incomplete", "broken", "lying"])
def test_truncated_get_is_retried_never_short(s3: S3Storage, faults: S3Faults, mode: str) -> None:
    data = os.urandom(256 * 1024)
    s3.put("packs/t", data)
    fault = faults.truncate(0.5, broken=mode == "broken", lie=mode == "lying")
    faults.add("GetObject", fault, times=1)
    with pytest.raises(TransientStorageError):
        s3.get("packs/t")
    faults.add("GetObject", fault, times=1)
    assert fast_retry(s3).get("packs/t") == data
    faults.add("GetObject", fault, times=1)
    assert fast_retry(s3).get("packs/t", 1000, 50_000) == data[1000:51_000]
    faults.add("GetObject", fault)  # always truncated: an error, never short data
    with pytest.raises(TransientStorageError):
        fast_retry(s3, attempts=3).get("packs/t")


# (d) throttling and 5xx ---------------------------------------------------------------------


def test_30_percent_throttling_still_succeeds(s3: S3Storage, faults: S3Faults) -> None:
    faults.add("*", faults.error(503, "SlowDown"), rate=0.2, seed=1)
    faults.add("*", faults.error(500, "InternalError"), rate=0.125, seed=2)  # ~30% in all
    store = fast_retry(s3, attempts=12)
    blobs = {f"c/{i}": os.urandom(100 + i) for i in range(40)}
    for key, blob in blobs.items():
        store.put(key, blob)
    for key, blob in blobs.items():
        assert store.get(key) == blob
        assert store.get(key, 10, 20) == blob[10:30]
    assert {i.key for i in store.list("c/")} == set(blobs)
    assert store.now() is not None
    assert store.delete_many(list(blobs)[:20]) == []
    for key in list(blobs)[20:]:
        store.delete(key)
    assert list(store.list("c/")) == []
    injected = sum(r.hits for r in faults.rules)
    assert 0.15 < injected / len(faults.calls) < 0.45


def test_total_outage_fails_in_bounded_time(s3: S3Storage, faults: S3Faults) -> None:
    faults.add("*", faults.error(503, "SlowDown"))
    store = fast_retry(s3, attempts=6)
    start = time.monotonic()
    for op in (
        lambda: store.put("x", b"x"),
        lambda: store.get("x"),
        lambda: list(store.list("")),
        lambda: store.stat("x"),
    ):
        with pytest.raises(TransientStorageError):
            op()
    assert time.monotonic() - start < 5


def test_non_transient_errors_are_not_retried(s3: S3Storage, faults: S3Faults) -> None:
    faults.add("PutObject", faults.error(403, "AccessDenied"))
    with pytest.raises(Exception) as info:
        fast_retry(s3).put("x", b"x")
    assert not isinstance(info.value, TransientStorageError)
    assert faults.calls.count("PutObject") == 1


# (e) stalled connections --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stalled_connection_times_out_and_is_retried(moto_server: S3Server) -> None:
    proxy = StallProxy(moto_server.endpoint_url, stall=1)
    try:
        s3 = make_s3_storage(
            moto_server, endpoint_url=proxy.endpoint_url, read_timeout=0.5, connect_timeout=1.0
        )
        store = fast_retry(s3)
        start = time.monotonic()
        store.put("s/1", b"after a stall")
        assert time.monotonic() - start < 0.5 * 1.1 + 1.5
        assert proxy.connections >= 2
        assert store.get("s/1") == b"after a stall"
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_permanent_stall_fails_within_timeouts(moto_server: S3Server) -> None:
    proxy = StallProxy(moto_server.endpoint_url, stall=None)
    try:
        s3 = make_s3_storage(
            moto_server,
            bucket="unused-bucket",
            endpoint_url=proxy.endpoint_url,
            read_timeout=0.4,
            connect_timeout=0.4,
        )
        store = fast_retry(s3, attempts=3)
        start = time.monotonic()
        with pytest.raises(TransientStorageError):
            store.get("s/1")
        elapsed = time.monotonic() - start
        assert elapsed < 3 * 0.4 * 1.1 + 0.5, elapsed
    finally:
        proxy.close()
