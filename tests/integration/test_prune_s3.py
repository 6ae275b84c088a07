"""drkit prune against a real S3 API (the moto server): end to end, the S3 clock, multipart."""

from __future__ import annotations

import io
import random
from datetime import timedelta

from s3_fixtures import fixture_moto_server, make_s3_storage  # noqa: F401 - session fixture

from drkit.config import Secret
from drkit.errors import IntegrityError
from drkit.prune import prune
from drkit.repository import Manifest, Repository
from drkit.repository import format as fmt
from drkit.repository import prunemarks as pm
from drkit.repository.keys import SecretWrapper
from drkit.repository.manifest import iso, new_backup_id
from drkit.sandbox.s3 import S3Server
from drkit.storage.retry import RetryingStorage


def wrapper() -> SecretWrapper:
    return SecretWrapper(Secret("prune s3 test key"), "test key", "key_env")


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def backup(repo: Repository, source: str, data: dict[str, bytes], *, commit: bool = True) -> Manifest:
    session = repo.session()
    refs = [session.write_stream(name, io.BytesIO(d)) for name, d in data.items()]
    session.finish()
    now = iso(repo.server_time())
    m = Manifest(new_backup_id(), source, "test", "full", now, now, refs)
    if commit:
        repo.commit_manifest(m)
    return m


def packs(storage) -> set[str]:
    return {i.key.rsplit("/", 1)[-1] for i in storage.list(fmt.DATA_PREFIX)}


def packs_of(m: Manifest) -> set[str]:
    return {str(c[1]) for s in m.streams for c in s.chunks}


def test_prune_end_to_end_on_s3_with_stale_multipart(moto_server: S3Server) -> None:
    s3 = make_s3_storage(moto_server)
    storage = RetryingStorage(s3)
    Repository.init(storage, wrapper())
    repo = Repository.open(storage, wrapper())
    repo.pack_size = 1  # one chunk a pack
    keep = {"a": rand(400_000, 1), "b": rand(300_000, 2)}
    m = backup(repo, "db", keep)
    gone = backup(repo, "db", {"c": rand(300_000, 3)})
    repo.delete_manifests("db", [gone.id])  # forget
    orphan = backup(repo, "db", {"d": rand(300_000, 4)}, commit=False)  # a crashed backup
    garbage = packs_of(gone) | packs_of(orphan)

    first = prune(repo)  # judged by S3's Date header
    assert sorted(first.marked) == sorted(fmt.pack_key(p) for p in garbage)
    assert first.deleted == [] and first.multipart_aborted == []
    assert packs(storage) == packs_of(m) | garbage

    # a crashed multipart upload: parts billed, no object (moto reports every upload as
    # initiated in 2010, so it is stale for any grace; the age rule is tested below)
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=s3.prefix + "data/ab/crashed")
    s3.client.upload_part(Bucket=s3.bucket, Key=s3.prefix + "data/ab/crashed", UploadId=upload["UploadId"],
                          PartNumber=1, Body=b"x" * 1024)

    real = repo.server_time
    repo.server_time = lambda: real() + timedelta(hours=25)  # type: ignore[method-assign]
    second = prune(repo)
    assert sorted(second.deleted) == sorted(fmt.pack_key(p) for p in garbage)
    assert second.multipart_aborted == ["data/ab/crashed"]
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix).get("Uploads", []) == []
    assert packs(storage) == packs_of(m)
    assert list(storage.list(pm.MARKS_PREFIX)) == []
    fresh = Repository.open(RetryingStorage(make_s3_storage(moto_server, bucket=s3.bucket)), wrapper())
    [left] = fresh.list_manifests("db")
    assert {n: fresh.open_stream(left.stream(n)).read() for n in keep} == keep


def test_abort_stale_uploads_keeps_young_ones(moto_server: S3Server) -> None:
    """Only uploads initiated (by the server's account) before the cutoff are aborted."""
    s3 = make_s3_storage(moto_server)
    key = s3.prefix + "data/cd/young"
    s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)
    [upload] = s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix)["Uploads"]
    started = upload["Initiated"]
    assert s3.abort_stale_uploads(started) == []  # not older than the cutoff
    assert s3.abort_stale_uploads(started - timedelta(days=1)) == []
    assert len(s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix)["Uploads"]) == 1
    assert s3.abort_stale_uploads(started + timedelta(seconds=1)) == ["data/cd/young"]
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix).get("Uploads", []) == []


def test_prune_on_s3_refuses_when_a_referenced_pack_is_missing(moto_server: S3Server) -> None:
    storage = RetryingStorage(make_s3_storage(moto_server))
    Repository.init(storage, wrapper())
    repo = Repository.open(storage, wrapper())
    repo.pack_size = 1  # one chunk a pack
    m = backup(repo, "db", {"a": rand(300_000, 5), "b": rand(300_000, 6)})
    orphan = backup(repo, "db", {"c": rand(300_000, 7)}, commit=False)
    lost = sorted(packs_of(m))[0]
    storage.delete(fmt.pack_key(lost))  # data lost behind prune's back
    try:
        prune(repo, grace=timedelta(0))
    except IntegrityError as exc:
        assert exc.exit_code == 5 and lost in str(exc)
    else:
        raise AssertionError("prune did not refuse")
    assert packs_of(orphan) <= packs(storage)
