"""Step 1: the file's SHA-256 and size, streamed, against what the registry recorded at upload."""

from __future__ import annotations

import hashlib

from models_app.validation.result import StepResult

_CHUNK = 1024 * 1024


def sha256_and_size(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_integrity(step: StepResult, path: str, *, expected_sha256: str | None, expected_size: int | None) -> None:
    sha256, size = sha256_and_size(path)
    step.data.update(sha256=sha256, size=size, expected_sha256=expected_sha256, expected_size=expected_size)
    problems = []
    if expected_size is not None and size != expected_size:
        problems.append(f"size is {size} bytes, the record says {expected_size}")
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        problems.append(f"sha256 is {sha256}, the record says {expected_sha256.lower()}")
    if problems:
        step.fail("the artifact does not match its record: " + "; ".join(problems))
    elif expected_sha256 is None and expected_size is None:
        step.detail = f"{size} bytes, sha256 {sha256} (nothing recorded to compare with)"
    else:
        step.detail = f"{size} bytes, sha256 {sha256} as recorded"
