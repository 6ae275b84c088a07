"""S3 storage (``s3://bucket/prefix``) over boto3.

botocore's own retries are off: every failure is classified once here (transient ->
:class:`TransientStorageError`, retried by :class:`drkit.storage.retry.RetryingStorage`) so that
retries, deadlines and fault injection live in one place.  Each object carries our own BLAKE3 of
its body in ``x-amz-meta-drkit-b3``, which is how an ambiguous commit (the server applied a PUT
but the client saw an error, and the retry got 412) is told apart from a real conflict.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import blake3
import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)

from drkit.config import S3Options
from drkit.errors import AlreadyExistsError, NotFoundError, StorageError, TransientStorageError
from drkit.storage.base import Capabilities, ObjectInfo, Storage

META_B3 = "drkit-b3"
_TRANSIENT_CODES = frozenset(
    "SlowDown Throttling ThrottlingException RequestTimeout RequestTimeoutException InternalError"
    " ServiceUnavailable RequestLimitExceeded TooManyRequests ConditionalRequestConflict"
    " OperationAborted BadDigest XAmzContentSHA256Mismatch".split()
)
_TRANSIENT_EXC = (
    HTTPClientError, IncompleteReadError, EndpointConnectionError, ConnectionClosedError,
    FlexibleChecksumError, OSError,
)  # fmt: skip
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_BATCH = 1000


def _code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "")), int(status or 0)


def translate(exc: Exception, what: str) -> StorageError:
    """Map a boto3/botocore exception to drkit's storage error tree (never includes secrets)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        code, status = _code(exc)
        msg = f"{what}: {code or status} (HTTP {status})"
        if code == "NoSuchBucket":
            return StorageError(f"{what}: bucket does not exist")
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError(f"{what}: not found")
        if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return TransientStorageError(msg)
        return StorageError(msg)
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what}: no S3 credentials found (AWS_ACCESS_KEY_ID, profile, ...)")
    if isinstance(exc, _TRANSIENT_EXC):
        return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {type(exc).__name__}: {exc}")
    return StorageError(f"{what}: unexpected {type(exc).__name__}: {exc}")


class S3Storage(Storage):
    """An S3 bucket (optionally under a key prefix) as a :class:`Storage`.

    ``session`` supplies credentials (default: the normal boto3 chain); ``client_hook`` is called
    with the new client, e.g. to register botocore event handlers for fault injection.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: S3Options | None = None,
        *,
        session: boto3.Session | None = None,
        client_hook: Callable[[Any], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = opts = options or S3Options()
        self.url = f"s3://{bucket}/{self.prefix}"
        config = Config(
            region_name=opts.region,
            signature_version="s3v4",
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},  # RetryingStorage retries
            s3={"addressing_style": opts.addressing_style},
            max_pool_connections=max(10, 2 * opts.max_concurrency),
            tcp_keepalive=True,
        )
        session = session or boto3.Session()
        self.client = session.client(
            "s3", endpoint_url=opts.endpoint_url, config=config, verify=opts.verify_tls
        )
        if client_hook is not None:
            client_hook(self.client)
        self._lock = threading.Lock()
        self._caps: Capabilities | None = None
        self._cond_complete: bool | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _k(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise StorageError(f"invalid object key: {key!r}")
        return self.prefix + key

    def _call(self, what: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as exc:  # noqa: BLE001 - classified, never swallowed
            raise translate(exc, what) from exc

    def _write_args(self, digest: str) -> dict[str, Any]:
        o = self.options
        args: dict[str, Any] = {"Metadata": {META_B3: digest}}
        if o.sse:
            args["ServerSideEncryption"] = o.sse
            if o.sse == "aws:kms" and o.sse_kms_key_id:
                args["SSEKMSKeyId"] = o.sse_kms_key_id
        if o.storage_class:
            args["StorageClass"] = o.storage_class
        return args

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._call(f"stat {key}", self.client.head_object, Key=self._k(key))
        except NotFoundError:
            return None

    def _settle_conflict(self, key: str, data: bytes, digest: str) -> None:
        """After a 412: return if the existing object is ours (ambiguous commit), else raise."""
        head = self._head(key)
        if head is None:  # gone again (or an in-flight conditional write): let the caller retry
            raise TransientStorageError(f"put {key}: precondition failed but object is absent")
        theirs = head.get("Metadata", {}).get(META_B3)
        if theirs == digest:
            return
        if theirs is None and head.get("ContentLength") == len(data) and self.get(key) == data:
            return
        raise AlreadyExistsError(f"object already exists with different content: {key}")

    # -- contract ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, exclusive: bool = True) -> None:
        data = bytes(data) if not isinstance(data, bytes) else data
        digest = blake3.blake3(data).hexdigest()
        if len(data) > self.options.multipart_threshold:
            self._put_multipart(key, data, digest, exclusive)
            return
        extra = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self._call(
                f"put {key}",
                self.client.put_object,
                Key=self._k(key),
                Body=data,
                **extra,
                **self._write_args(digest),
            )
        except StorageError as exc:
            if exclusive and _is_precondition(exc):
                self._settle_conflict(key, data, digest)
                return
            raise

    def _put_multipart(self, key: str, data: bytes, digest: str, exclusive: bool) -> None:
        full = self._k(key)
        conditional = exclusive and self._conditional_complete()
        if exclusive:
            # Cheap, saves re-uploading on re-runs, and is the only guard if the server
            # ignores If-None-Match on CompleteMultipartUpload.
            if self._head(key) is not None:
                self._settle_conflict(key, data, digest)
                return
        upload_id = self._call(
            f"put {key}",
            self.client.create_multipart_upload,
            Key=full,
            ChecksumAlgorithm="CRC32",
            **self._write_args(digest),
        )["UploadId"]
        try:
            parts = self._upload_parts(key, full, upload_id, data)
            extra = {"IfNoneMatch": "*"} if conditional else {}
            resp = self._call(
                f"put {key}",
                self.client.complete_multipart_upload,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
            if not resp.get("ETag"):  # a 200 whose body was an <Error>, or otherwise malformed
                raise TransientStorageError(f"put {key}: CompleteMultipartUpload gave no ETag")
        except StorageError as exc:
            self._abort(full, upload_id)
            if conditional and _is_precondition(exc):
                self._settle_conflict(key, data, digest)
                return
            raise
        except BaseException:
            self._abort(full, upload_id)
            raise
        head = self._head(key)  # never trust a completion we did not see: barman #259
        if head is None or head.get("ContentLength") != len(data):
            raise TransientStorageError(f"put {key}: completed multipart object has wrong size")
        if head.get("Metadata", {}).get(META_B3) != digest:
            raise AlreadyExistsError(f"object replaced concurrently with different content: {key}")

    def _upload_parts(self, key: str, full: str, upload_id: str, data: bytes) -> list[dict]:
        size = self.options.part_size
        view = memoryview(data)

        def one(number: int) -> dict[str, Any]:
            chunk = bytes(view[(number - 1) * size : number * size])
            resp = self._call(
                f"put {key} part {number}",
                self.client.upload_part,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ChecksumAlgorithm="CRC32",
            )
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            if resp.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = resp["ChecksumCRC32"]
            return part

        count = (len(data) + size - 1) // size
        with ThreadPoolExecutor(max_workers=max(1, self.options.max_concurrency)) as pool:
            futures = [pool.submit(one, n) for n in range(1, count + 1)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # stop queued parts: the upload is aborted
                raise

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception:  # noqa: BLE001 - best effort; prune aborts stale uploads
            pass

    def _conditional_complete(self) -> bool:
        """Does the server honour If-None-Match on CompleteMultipartUpload?  Probed once."""
        with self._lock:
            if self._cond_complete is None:
                self._cond_complete = self._probe_conditional_complete()
            return self._cond_complete

    def _probe_conditional_complete(self) -> bool:
        full = self._k(f".drkit-probe/{uuid.uuid4().hex}")
        c, b = self.client, self.bucket
        try:
            c.put_object(Bucket=b, Key=full, Body=b"probe")
            uid = c.create_multipart_upload(Bucket=b, Key=full)["UploadId"]
            try:
                etag = c.upload_part(Bucket=b, Key=full, UploadId=uid, PartNumber=1, Body=b"x")
                c.complete_multipart_upload(
                    Bucket=b,
                    Key=full,
                    UploadId=uid,
                    IfNoneMatch="*",
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
                )
                return False
            except ClientError as exc:
                return _code(exc)[1] == 412
            finally:
                self._abort(full, uid)
        except Exception:  # noqa: BLE001 - unknown means "not supported": HEAD guard only
            return False
        finally:
            try:
                c.delete_object(Bucket=b, Key=full)
            except Exception:  # noqa: BLE001 - writers may lack delete; prune removes probes
                pass

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        what = f"get {key}"
        if length == 0:
            if self.stat(key) is None:
                raise NotFoundError(f"{what}: not found")
            return b""
        kw: dict[str, Any] = {"Key": self._k(key)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kw["Range"] = f"bytes={offset}-{end}"
        resp = self._call(what, self.client.get_object, **kw)
        try:
            body = resp["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what) from exc
        finally:
            resp["Body"].close()
        want = length if length is not None else resp.get("ContentLength")
        if length is not None and resp.get("ContentRange"):
            total = int(str(resp["ContentRange"]).rsplit("/", 1)[-1])
            if offset + length > total:
                raise StorageError(f"{what}: range {offset}+{length} beyond end ({total} bytes)")
        if want is None or len(body) != want:
            raise TransientStorageError(f"{what}: short read, got {len(body)} of {want} bytes")
        return body

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._head(key)
        if head is None:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), _utc(head.get("LastModified")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        what = f"list {prefix!r}"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(self.prefix) :]
                    yield ObjectInfo(key, int(obj["Size"]), _utc(obj.get("LastModified")))
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what) from exc

    def delete(self, key: str) -> None:
        try:
            self._call(f"delete {key}", self.client.delete_object, Key=self._k(key))
        except NotFoundError:
            return

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        keys = list(dict.fromkeys(keys))
        failed: list[str] = []
        for i in range(0, len(keys), _BATCH):
            batch = keys[i : i + _BATCH]
            try:
                resp = self._call(
                    f"delete {len(batch)} objects",
                    self.client.delete_objects,
                    Delete={"Objects": [{"Key": self._k(k)} for k in batch], "Quiet": True},
                )
            except TransientStorageError:
                raise  # deletes are idempotent: the whole call is retried
            except StorageError:
                failed.extend(batch)
                continue
            for err in resp.get("Errors", ()):
                if err.get("Code") != "NoSuchKey":
                    failed.append(str(err.get("Key", ""))[len(self.prefix) :])
        return failed

    def abort_stale_uploads(self, older_than: datetime) -> list[str]:
        """Abort every multipart upload under the prefix initiated before ``older_than`` (a writer
        that crashed mid-upload leaves its parts billed but invisible); returns their keys."""
        aborted: list[str] = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            uploads = [u for page in pages for u in page.get("Uploads", ())]
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, "list multipart uploads") from exc
        for upload in uploads:
            started = _utc(upload.get("Initiated"))
            if started is None or started >= older_than:
                continue
            key = str(upload["Key"])[len(self.prefix) :]
            try:
                self._call(f"abort multipart upload of {key}", self.client.abort_multipart_upload,
                           Key=upload["Key"], UploadId=upload["UploadId"])
            except NotFoundError:
                continue  # completed or aborted since the listing
            aborted.append(key)
        return aborted

    def now(self) -> datetime | None:
        resp = self._call("server time", self.client.head_bucket)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return parsedate_to_datetime(date) if date else None

    @property  # type: ignore[override]
    def capabilities(self) -> Capabilities:
        with self._lock:
            if self._caps is None:
                self._caps = self._probe_capabilities()
            return self._caps

    def _probe_capabilities(self) -> Capabilities:
        lock, extra = False, {}
        try:
            cfg = self.client.get_object_lock_configuration(Bucket=self.bucket)
            lock = cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as exc:
            code, _ = _code(exc)
            if code != "ObjectLockConfigurationNotFoundError":
                extra["object_lock"] = f"unknown ({code})"
        except Exception as exc:  # noqa: BLE001 - a capability probe must not break opening
            extra["object_lock"] = f"unknown ({type(exc).__name__})"
        return Capabilities(conditional_create=True, server_time=True, object_lock=lock, extra=extra)

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def create_bucket(client: Any, bucket: str, *, object_lock: bool = False) -> None:
        """Create ``bucket`` (tests and sandboxes only)."""
        kw: dict[str, Any] = {"Bucket": bucket}
        region = client.meta.region_name
        if region and region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if object_lock:
            kw["ObjectLockEnabledForBucket"] = True
        client.create_bucket(**kw)


def _utc(when: datetime | None) -> datetime | None:
    return when.astimezone(UTC) if when is not None else None


def _is_precondition(exc: StorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ClientError) and (
        _code(cause)[1] == 412 or _code(cause)[0] == "PreconditionFailed"
    )
