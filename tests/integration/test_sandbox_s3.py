"""The S3 sandboxes' smoke checks against the real servers: multipart put/get on both, and on
versitygw an Object Lock that really refuses to delete a retained version."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from drkit.sandbox.s3 import S3Server

MiB = 1024 * 1024


@pytest.mark.parametrize("server_name", ["moto_server", "versitygw_server"])
def test_multipart_put_get(server_name: str, request: pytest.FixtureRequest) -> None:
    server: S3Server = request.getfixturevalue(server_name)
    s3 = server.client()
    bucket = server.create_bucket(f"mp-{os.urandom(4).hex()}")
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="big")
    etags = [s3.upload_part(Bucket=bucket, Key="big", UploadId=up["UploadId"], PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]})
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == b"".join(parts)


def test_versitygw_object_lock_refuses_delete_of_retained_version(versitygw_server: S3Server) -> None:
    s3 = versitygw_server.client()
    bucket = versitygw_server.create_bucket(f"lock-{os.urandom(4).hex()}", object_lock=True)
    until = datetime.now(UTC) + timedelta(days=1)
    put = s3.put_object(Bucket=bucket, Key="pack", Body=b"immutable", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=until)
    version = put["VersionId"]
    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=bucket, Key="pack", VersionId=version)
    assert err.value.response["Error"]["Code"] in ("AccessDenied", "InvalidRequest", "ObjectLocked")
    got = s3.get_object(Bucket=bucket, Key="pack", VersionId=version)
    assert got["Body"].read() == b"immutable"
    retention = s3.get_object_retention(Bucket=bucket, Key="pack", VersionId=version)["Retention"]
    assert retention["Mode"] == "COMPLIANCE" and retention["RetainUntilDate"] > datetime.now(UTC)
