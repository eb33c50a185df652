"""Secrets the embedded setup generates once and keeps in a private file (SECRET_KEY, the manifest key)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def generated_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept at `path`; on the first call, `make()` is written there (mode 0600) and returned.

    Django-free: the settings call it before Django is configured.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temp file (mkstemp: mode 0600), then hard-linked into place:
        # concurrent first starts (several gunicorn workers, the Celery worker) agree on one secret
        # and never read a half-written file.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(make() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    return path.read_text().strip()
