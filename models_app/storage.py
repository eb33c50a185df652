"""Artifact storage: streaming writers that leave nothing behind unless committed, on S3 or a local directory."""

from __future__ import annotations

import io
import logging
import os
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, storages
from django.urls import reverse
from django.utils import timezone

from hotswap.exceptions import ServiceUnavailableError

logger = logging.getLogger(__name__)

SIGNED_URL_SALT = "hotswap.artifact-download"


class StorageUnavailableError(ServiceUnavailableError):
    code = "STORAGE_UNAVAILABLE"


@dataclass(frozen=True)
class DownloadLink:
    url: str
    expires_at: object  # datetime


class ArtifactWriter(Protocol):
    key: str

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def new_artifact_key(prefix: str = "artifacts") -> str:
    # Keys don't carry the model name: the upload streams before the form fields are validated.
    today = timezone.now()
    return f"{prefix}/{today:%Y/%m}/{uuid.uuid4().hex}"


def _storage_error(action: str, exc: Exception) -> StorageUnavailableError:
    logger.warning("artifact storage %s failed: %s", action, exc)
    return StorageUnavailableError(
        f"Artifact storage is unavailable ({action} failed); nothing was stored. Retry later."
    )


class S3MultipartWriter:
    """Streams into an S3 multipart upload; parts go up in threads while the request is still arriving.

    Memory is bounded by (concurrency + 1) parts. The object only exists after commit();
    abort() removes the uploaded parts, so a failed upload leaves no object behind.
    """

    def __init__(self, client, bucket: str, key: str, *, part_bytes: int, concurrency: int):
        self.client, self.bucket, self.key = client, bucket, key
        self.part_bytes = max(part_bytes, 5 * 1024 * 1024)  # S3's minimum part size
        # Chunks are kept as received and joined once per part: one copy, not a growing bytearray's several.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-part")
        self._slots = threading.BoundedSemaphore(concurrency)
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self.part_bytes:
            self._submit(self._take_buffer())

    def _take_buffer(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return data

    def _submit(self, body: bytes) -> None:
        self._raise_failed_part()
        if self._upload_id is None:
            try:
                self._upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
            except (BotoCoreError, ClientError) as exc:
                raise _storage_error("starting the upload", exc) from exc
        self._slots.acquire()  # backpressure: the request waits instead of buffering without bound
        number = len(self._parts) + 1
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(lambda _f: self._slots.release())
        self._parts.append(future)

    def _upload_part(self, number: int, body: bytes) -> dict:
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _raise_failed_part(self) -> None:
        for future in self._parts:
            if future.done() and future.exception() is not None:
                raise _storage_error("uploading a part", future.exception())  # type: ignore[arg-type]

    def commit(self) -> None:
        try:
            if self._upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._take_buffer())
            else:
                if self._buffered:
                    self._submit(self._take_buffer())
                parts = [future.result() for future in self._parts]
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
                )
        except (BotoCoreError, ClientError) as exc:
            self.abort()
            raise _storage_error("storing the artifact", exc) from exc
        except StorageUnavailableError:
            self.abort()
            raise
        finally:
            self._chunks, self._buffered = [], 0
        self._done = True
        self._pool.shutdown(wait=False)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._chunks, self._buffered = [], 0
        for future in self._parts:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            except (BotoCoreError, ClientError) as exc:
                # The periodic cleanup task aborts stale multipart uploads that this could not.
                logger.warning("could not abort multipart upload %s for %s: %s", self._upload_id, self.key, exc)


class FileWriter:
    """Writes to a hidden temporary file beside the target; commit() renames it into place atomically."""

    def __init__(self, root: Path, key: str):
        self.key = key
        self.path = root / key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.partial")
        self._file: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "writer already finished"
        self._file.write(chunk)

    def commit(self) -> None:
        assert self._file is not None, "writer already finished"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)


class S3RangeReader(io.RawIOBase):
    """A seekable read-only view of an S3 object that fetches only the byte ranges asked for."""

    def __init__(self, client, bucket: str, key: str, size: int):
        self.client, self.bucket, self.key, self.size = client, bucket, key, size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size or len(buffer) == 0:
            return 0
        end = min(self.position + len(buffer), self.size) - 1
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end}")
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error("reading the artifact", exc) from exc
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


_s3_clients: dict[tuple, tuple[int, object]] = {}
_s3_clients_lock = threading.Lock()


def _s3_client(storage):
    """One S3 client per process and S3 account, shared by all threads (boto3 clients are thread-safe).

    django-storages keeps a boto3 session and resource per thread, and each loads botocore's S3 model
    again: ~18 MB for every thread of a gthread web worker that ever presigns a link or takes an upload.
    Keyed by the connection's settings, not the storage object: threads racing at start-up may each
    get a storage instance of their own.
    """
    key = (storage.endpoint_url, storage.region_name, storage.access_key, storage.secret_key,
           storage.security_token, storage.session_profile, storage.use_ssl, storage.verify,
           repr(storage.client_config.__dict__))
    with _s3_clients_lock:
        pid, client = _s3_clients.get(key, (None, None))
        if pid != os.getpid():  # none yet, or a forked child's copy of its parent's (never share sockets)
            client = storage._create_session().client(
                "s3", region_name=storage.region_name, use_ssl=storage.use_ssl, endpoint_url=storage.endpoint_url,
                config=storage.client_config, verify=storage.verify)
            _s3_clients[key] = (os.getpid(), client)
        return client


class ArtifactStore:
    """The one place that talks to artifact storage; picks S3 or the filesystem from settings.STORAGES."""

    def __init__(self):
        self.storage = storages["artifacts"]
        self.is_s3 = not isinstance(self.storage, FileSystemStorage)

    @property
    def client(self):
        return _s3_client(self.storage)

    @property
    def bucket(self) -> str:
        return self.storage.bucket_name

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}" if self.is_s3 else f"file://{self.storage.path(key)}"

    def writer(self, key: str) -> ArtifactWriter:
        if self.is_s3:
            return S3MultipartWriter(
                self.client, self.bucket, key,
                part_bytes=settings.ARTIFACT_PART_BYTES, concurrency=settings.ARTIFACT_UPLOAD_CONCURRENCY,
            )
        return FileWriter(Path(self.storage.location), key)

    def open(self, key: str, size: int) -> BinaryIO:
        """A seekable reader; on S3 it reads ranges on demand instead of downloading everything."""
        if self.is_s3:
            return io.BufferedReader(S3RangeReader(self.client, self.bucket, key, size), buffer_size=256 * 1024)
        return open(self.storage.path(key), "rb")

    def exists(self, key: str) -> bool:
        if not self.is_s3:
            return self.storage.exists(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _storage_error("checking the artifact", exc) from exc
        except BotoCoreError as exc:
            raise _storage_error("checking the artifact", exc) from exc

    def delete(self, key: str) -> None:
        if not self.is_s3:
            self.storage.delete(key)
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _storage_error("deleting the artifact", exc) from exc

    def download_link(self, key: str, *, filename: str, request=None, expires_in: int | None = None) -> DownloadLink:
        """A short-lived URL a client fetches the bytes from directly (S3 presigned, or a signed local URL)."""
        expires_in = expires_in or settings.ARTIFACT_URL_EXPIRY_SECONDS
        expires_at = timezone.now() + timedelta(seconds=expires_in)
        if self.is_s3:
            url = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key,
                        "ResponseContentDisposition": f'attachment; filename="{filename}"'},
                ExpiresIn=expires_in,
            )
            return DownloadLink(url=url, expires_at=expires_at)
        token = signing.dumps({"key": key, "name": filename, "exp": int(expires_at.timestamp())}, salt=SIGNED_URL_SALT)
        path = reverse("artifact-signed-download", kwargs={"token": token})
        return DownloadLink(url=request.build_absolute_uri(path) if request else path, expires_at=expires_at)

    def abandoned_uploads_abort(self, *, older_than: timedelta) -> int:
        """Aborts multipart uploads (S3) or removes partial files (filesystem) left by crashed processes."""
        cutoff = timezone.now() - older_than
        count = 0
        if self.is_s3:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        count += 1
            return count
        root = Path(self.storage.location)
        for partial in root.rglob(".*.partial") if root.exists() else []:
            if partial.stat().st_mtime < cutoff.timestamp():
                partial.unlink(missing_ok=True)
                count += 1
        return count


def artifact_store() -> ArtifactStore:
    return ArtifactStore()
