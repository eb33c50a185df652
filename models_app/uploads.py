"""Receiving artifacts: hash, size-check, sniff and store each chunk as it arrives, in constant memory."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable

from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers

from hotswap.exceptions import ApplicationError, PayloadTooLargeError
from models_app.formats import FormatSniffer
from models_app.storage import ArtifactStore, StorageUnavailableError, new_artifact_key

logger = logging.getLogger(__name__)


class PendingArtifact:
    """An artifact on its way into storage: invisible until commit(), removable by discard() at any stage."""

    def __init__(self, store: ArtifactStore, *, filename: str, max_bytes: int):
        self.store = store
        self.key = new_artifact_key()
        self.filename = (filename or "")[:255]
        self.max_bytes = max_bytes
        self.size = 0
        self.sha256 = ""
        self.sniffer = FormatSniffer()
        self.state = "receiving"
        self.started_ns = time.time_ns()  # the first bytes are arriving: the model.upload span starts here
        self.storage_error: StorageUnavailableError | None = None
        self._hasher = hashlib.sha256()
        self._writer = store.writer(self.key)

    @property
    def name(self) -> str:
        return self.filename or "artifact"

    def close(self) -> None:
        # Django closes the files of a multipart body it stops parsing (too many fields or files).
        self.discard()

    @classmethod
    def receive(
        cls, store: ArtifactStore, chunks: Iterable[bytes], *, filename: str, max_bytes: int
    ) -> PendingArtifact:
        """Streams an iterable of chunks (e.g. an UploadedFile's .chunks()) into a new pending artifact."""
        artifact = cls(store, filename=filename, max_bytes=max_bytes)
        try:
            for chunk in chunks:
                artifact.write(chunk)
            artifact.finish()
        except BaseException:
            artifact.discard()
            raise
        return artifact

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise PayloadTooLargeError(
                f"The artifact is larger than the limit of {self.max_bytes} bytes; nothing was stored.",
                extra={"max_bytes": self.max_bytes},
            )
        if self.storage_error:
            return  # drain the rest of the request so the client reads a clean 503, not a reset
        self._hasher.update(chunk)
        self.sniffer.feed(chunk)
        try:
            self._writer.write(chunk)
        except StorageUnavailableError as exc:
            self.storage_error = exc
            self._writer.abort()

    def finish(self) -> None:
        if self.storage_error:
            raise self.storage_error
        self.sha256 = self._hasher.hexdigest()
        self.state = "received"

    def commit(self) -> None:
        self._writer.commit()
        self.state = "stored"

    def keep(self) -> None:
        """The artifact now belongs to a committed ModelVersion row; discard() no longer touches it."""
        self.state = "kept"

    def discard(self) -> None:
        """Leaves nothing behind: aborts the upload, or deletes the object if it was already committed."""
        if self.state == "kept":
            return
        if self.state == "stored":
            try:
                self.store.delete(self.key)
            except ApplicationError:
                logger.error("could not delete discarded artifact %s; the cleanup task will retry", self.key)
        elif self.state != "discarded":
            self._writer.abort()
        self.state = "discarded"


class ArtifactUploadHandler(FileUploadHandler):
    """Django upload handler that streams the `artifact` file field into storage instead of a temp file."""

    chunk_size = 1024 * 1024

    def __init__(self, request, *, store: ArtifactStore, max_bytes: int, field_name: str = "artifact"):
        super().__init__(request)
        self.store, self.max_bytes, self.field_name = store, max_bytes, field_name
        self.artifacts: list[PendingArtifact] = []
        self.current: PendingArtifact | None = None
        self.unexpected_files: list[str] = []

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        if field_name != self.field_name or self.artifacts:
            self.unexpected_files.append(field_name)
            self.current = None
        else:
            self.current = PendingArtifact(self.store, filename=file_name, max_bytes=self.max_bytes)
            self.artifacts.append(self.current)
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.current is not None:
            self.current.write(raw_data)
        return None  # consumed; unexpected files are read and dropped

    def file_complete(self, file_size: int) -> PendingArtifact | None:
        # finish() is left to the view: raising here would abandon the rest of the request body.
        return self.current

    def upload_interrupted(self) -> None:
        self.discard_all()

    def discard_all(self) -> None:
        for artifact in self.artifacts:
            artifact.discard()
