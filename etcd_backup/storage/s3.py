"""S3-compatible object storage (any S3, and UFile through its S3 API) via boto3."""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig

from etcd_backup.errors import ConfigError, NotFound, StorageError, TransientStorageError
from etcd_backup.storage.base import Closing, ObjectInfo, Readable, ReadStream
from etcd_backup.storage.names import check_key, clean_prefix
from etcd_backup.storage.stream import FullReads, Reader

MiB = 1024 * 1024
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
MISSING = {"404", "NoSuchKey", "NotFound"}
RETRYABLE = {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}
NETWORK_ERRORS = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, timeouts
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.HTTPError,
    OSError,
)
UFILE_REGION = re.compile(r"^[a-z]{2,4}(-[a-z0-9]+){0,3}$")


class S3Storage(Closing):
    """Objects in one bucket under a prefix, streamed with boto3's transfer manager."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str,
        secret_key: str,
        addressing_style: str = "path",
        verify: bool | str = True,  # False, True, a CA bundle path, or the CA bundle's PEM text
        multipart_chunk: int = 8 * MiB,
        multipart_threshold: int | None = None,
        max_concurrency: int = 4,
        page_size: int = 1000,
        batch_delete: bool = True,
        connect_timeout: float = 10,
        read_timeout: float = 60,
    ):
        if not bucket:
            raise ConfigError("an S3 bucket name is required", step=f"{self.kind} config")
        if addressing_style not in ("path", "virtual", "auto"):
            raise ConfigError(
                f"addressing_style must be path, virtual or auto, not {addressing_style!r}", step=f"{self.kind} config"
            )
        self.bucket, self.prefix, self.endpoint_url = bucket, clean_prefix(prefix), endpoint_url
        self.page_size, self.batch_delete = page_size, batch_delete
        self._ca_file = _pem_file(verify) if isinstance(verify, str) and "-----BEGIN" in verify else None
        config = _boto_config(addressing_style, connect_timeout, read_timeout, max_concurrency + 2)
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or "us-east-1",
            verify=self._ca_file or verify,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold or multipart_chunk,
            multipart_chunksize=multipart_chunk,
            max_concurrency=max_concurrency,
            preferred_transfer_client="classic",
        )
        # Bound what a non-seekable source may buffer: one part per worker.
        self._transfer.max_in_memory_upload_chunks = max_concurrency
        # Multipart uploads begun and not completed, by object name: aborted when their put fails.
        self._uploads: dict[str, str] = {}
        self._writing: set[str] = set()  # names a put is uploading right now (never aborted under it)
        self._uploads_lock = threading.Lock()
        self._client.meta.events.register("after-call.s3.CreateMultipartUpload", self._note_upload)

    def describe(self) -> str:
        """Where objects go, e.g. 's3://bucket/prefix/ at https://endpoint'."""
        where = f"{self.kind}://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def put(self, key: str, source: Readable) -> ObjectInfo:
        """Stream source into key (multipart above the threshold); nothing is visible on failure.

        A failed multipart upload is aborted (its parts would be stored and billed, unseen); when the
        server cannot be reached for that, the abort is tried again by the next put and by close().
        """
        name = self.prefix + check_key(key)
        self._abort_uploads()
        with self._uploads_lock:
            self._writing.add(name)
        try:
            with self._errors("put", key):
                self._client.upload_fileobj(FullReads(source), self.bucket, name, Config=self._transfer)
        except BaseException:
            with self._uploads_lock:
                self._writing.discard(name)
            self._abort_uploads()
            raise
        with self._uploads_lock:
            self._writing.discard(name)
            self._uploads.pop(name, None)
        return self.stat(key)

    def _note_upload(self, parsed: dict | None = None, **_: object) -> None:
        """botocore hook: remember the id of a multipart upload as soon as the server gives it."""
        if parsed and parsed.get("UploadId") and parsed.get("Key"):
            with self._uploads_lock:
                self._uploads[parsed["Key"]] = parsed["UploadId"]

    def _abort_uploads(self) -> None:
        """Abort the uploads failed puts left; those the server did not confirm stay remembered."""
        with self._uploads_lock:
            pending = [(name, upload) for name, upload in self._uploads.items() if name not in self._writing]
        for name, upload in pending:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    continue
            except (botocore.exceptions.BotoCoreError, *NETWORK_ERRORS):
                continue
            with self._uploads_lock:
                self._uploads.pop(name, None)

    def open(self, key: str) -> ReadStream:
        """Stream key's content; raises NotFound when it does not exist."""
        name = self.prefix + check_key(key)
        with self._errors("open", key):
            body = self._client.get_object(Bucket=self.bucket, Key=name)["Body"]
        return Reader(body, lambda exc: self._error(exc, "read", key), NETWORK_ERRORS)

    def stat(self, key: str) -> ObjectInfo:
        """Size and time of key, or NotFound."""
        name = self.prefix + check_key(key)
        with self._errors("stat", key):
            head = self._client.head_object(Bucket=self.bucket, Key=name)
        return ObjectInfo(key, head["ContentLength"], head["LastModified"])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under prefix, page by page (ListObjects, at most page_size keys a page)."""
        pages = self._client.get_paginator("list_objects").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": self.page_size}
        )
        with self._errors("list", prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][len(self.prefix) :], item["Size"], item["LastModified"])

    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys (batches of 1000, or one by one where DeleteObjects is not wanted)."""
        names = [self.prefix + check_key(k) for k in keys]
        with self._errors("delete", ", ".join(names[:3])):
            if not self.batch_delete:
                for name in names:
                    self._client.delete_object(Bucket=self.bucket, Key=name)
                return
            for start in range(0, len(names), 1000):
                batch = [{"Key": n} for n in names[start : start + 1000]]
                result = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                failed = [e for e in result.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if failed:
                    raise StorageError(
                        f"{self.describe()}: could not delete {failed[0]['Key']}: {failed[0].get('Code')}",
                        step=f"{self.kind} delete",
                    )

    def close(self) -> None:
        """Abort what failed uploads left, release pooled connections, remove the CA bundle file made from PEM text."""
        self._abort_uploads()
        self._client.close()
        if self._ca_file:
            os.unlink(self._ca_file)
            self._ca_file = None

    def _errors(self, op: str, key: str):
        return _Translate(self, op, key)

    def _error(self, exc: BaseException, op: str, key: str) -> StorageError:
        """Map a boto/network exception to NotFound, StorageError or TransientStorageError."""
        step, where = f"{self.kind} {op}", f"{self.describe()}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in MISSING:
                return NotFound(f"{where}: {key} does not exist", step=step)
            if code == "NoSuchBucket":
                return StorageError(f"{where}: bucket {self.bucket} does not exist", step=step)
            if code in DENIED or status == 403:
                return StorageError(
                    f"{where}: access denied ({code}): check the access key, secret key "
                    f"and the rights on bucket {self.bucket}",
                    step=step,
                )
            if code in RETRYABLE or status >= 500:
                return TransientStorageError(f"{where}: server error {status} {code} during {op} of {key}", step=step)
            return StorageError(f"{where}: {op} of {key} refused: {status} {code}", step=step)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorageError(f"{where}: no credentials configured", step=step)
        return TransientStorageError(f"{where}: {op} of {key} failed: {_network_reason(exc)}", step=step)


def _pem_file(pem: str) -> str:
    """Write a CA bundle given as PEM text to a private temp file (boto3 wants a path); close() removes it."""
    fd, path = tempfile.mkstemp(prefix="etcd-backup-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as f:
        f.write(pem)
    return path


def _boto_config(
    addressing_style: str, connect_timeout: float, read_timeout: float, pool: int
) -> botocore.config.Config:
    """SigV4, modest retries, timeouts, and no checksums unless an operation requires them (UFile)."""
    return botocore.config.Config(
        signature_version="s3v4",
        s3={"addressing_style": addressing_style},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=pool,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class _Translate:
    """Context manager that re-raises boto and network errors as storage errors."""

    def __init__(self, storage: S3Storage, op: str, key: str):
        self.storage, self.op, self.key = storage, op, key

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)) or isinstance(
            exc, NETWORK_ERRORS
        ):
            raise self.storage._error(exc, self.op, self.key) from None
        return False


def _network_reason(exc: BaseException) -> str:
    """A short reason without URLs' query strings (which may carry signatures)."""
    text = str(exc).split("?")[0]
    return f"{exc.__class__.__name__}: {text}"[:300]


class UFileStorage(S3Storage):
    """UCloud UFile (US3) through its S3 API: SigV4, fixed 8 MiB parts, no checksums, lists <= 5000."""

    kind = "ufile"


def ufile_endpoint(region: str, internal: bool = False) -> str:
    """The S3 endpoint of a UFile region ('cn-bj' -> 'https://s3-cn-bj.ufileos.com')."""
    if not UFILE_REGION.match(region or ""):
        raise ConfigError(
            f"UFile region {region!r} is not valid: use a region id like 'cn-bj' or 'hk'", step="ufile config"
        )
    return f"http://internal.s3-{region}.ufileos.com" if internal else f"https://s3-{region}.ufileos.com"


def ufile_storage(
    public_key: str,
    private_key: str,
    region: str,
    bucket: str,
    prefix: str = "",
    *,
    internal: bool = False,
    endpoint_url: str | None = None,
    max_concurrency: int = 4,
) -> UFileStorage:
    """A Storage on a UFile bucket; endpoint_url overrides the regional endpoint (tests, proxies)."""
    endpoint = endpoint_url or ufile_endpoint(region, internal)
    if endpoint_url:
        ufile_endpoint(region)  # still validate the region
    return UFileStorage(
        bucket,
        prefix,
        endpoint_url=endpoint,
        region=region,
        access_key=public_key,
        secret_key=private_key,
        addressing_style="path",
        multipart_chunk=8 * MiB,
        multipart_threshold=8 * MiB,
        max_concurrency=max_concurrency,
        page_size=1000,
        batch_delete=False,
    )
