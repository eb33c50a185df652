"""Streaming artifact download with HTTP Range resume, then size and sha256 verification."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from hotswap_device import tracing

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024


class DownloadInterrupted(Exception):
    """The transfer did not complete; the partial file is kept so the next attempt resumes."""


class IntegrityError(Exception):
    """The bytes are not the ones the manifest promised; the file has been deleted."""


def file_sha256(path: Path, *, chunk: int = CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, *, size: int, sha256: str) -> None:
    """Raises IntegrityError (and deletes the file) unless it has exactly the expected size and sha256."""
    with tracing.span("model.verify", attributes={"artifact.size": size}):
        actual_size = path.stat().st_size
        if actual_size != size:
            path.unlink(missing_ok=True)
            raise IntegrityError(f"size mismatch: expected {size} bytes, got {actual_size}")
        actual = file_sha256(path)
        if actual != sha256:
            path.unlink(missing_ok=True)
            raise IntegrityError(f"sha256 mismatch: expected {sha256}, got {actual}")


def download(
    client: httpx.Client,
    url: str,
    partial: Path,
    *,
    size: int,
    sha256: str,
    attempts: int = 3,
    backoff_seconds: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Downloads `url` into `partial`, resuming whatever is already there; returns it once verified.

    Bytes are streamed to disk and hashed from disk afterwards, so memory use does not depend
    on the model's size. DownloadInterrupted after `attempts` failed transfers (partial kept);
    IntegrityError when the complete file is not the promised one (file deleted).
    """
    with tracing.span("model.download", attributes={"artifact.size": size}) as current:
        made = _fetch(client, url, partial, size=size, attempts=attempts, backoff_seconds=backoff_seconds,
                      sleep=sleep)
        tracing.annotate(current, **{"download.attempts": made})
    verify_file(partial, size=size, sha256=sha256)
    return partial


def _fetch(client: httpx.Client, url: str, partial: Path, *, size: int, attempts: int, backoff_seconds: float,
           sleep: Callable[[float], None]) -> int:
    """Transfers until `partial` holds `size` bytes (resuming); returns the attempts made."""
    last_error = "no attempt made"
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()  # longer than promised: cannot be a prefix of the right file
            have = 0
        if have == size:
            break
        try:
            _transfer(client, url, partial, have=have, size=size)
        except (httpx.TransportError, DownloadInterrupted) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("download of %s interrupted at %d bytes (attempt %d/%d): %s", partial.name,
                           partial.stat().st_size if partial.exists() else 0, attempt + 1, attempts, last_error)
            continue
        break
    else:
        raise DownloadInterrupted(last_error)
    if partial.stat().st_size < size:
        raise DownloadInterrupted(f"only {partial.stat().st_size} of {size} bytes arrived")
    return attempt + 1


def _transfer(client: httpx.Client, url: str, partial: Path, *, have: int, size: int) -> None:
    # identity: byte ranges must address the stored bytes, not an on-the-fly compressed representation.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 206 and have:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise DownloadInterrupted(f"the server resumed at the wrong offset ({content_range!r})")
            mode = "ab"
        elif response.status_code == 200:
            # The server ignored the Range header and sends the whole file: start over.
            mode, have = "wb", 0
        elif response.status_code == 416:
            partial.unlink(missing_ok=True)
            raise DownloadInterrupted("the server could not resume from our partial file; starting over")
        else:
            raise DownloadInterrupted(f"HTTP {response.status_code} from the artifact URL")
        written = have
        with open(partial, mode) as handle:
            # Blocks as they arrive (no re-chunking buffer): whatever arrived before a cut is on disk to resume from.
            for block in response.iter_bytes():
                written += len(block)
                if written > size:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise IntegrityError(f"size mismatch: the server sent more than the promised {size} bytes")
                handle.write(block)
            handle.flush()
            # Durable before it is renamed into place: a power cut must not leave a truncated model.
            os.fsync(handle.fileno())
