"""Where a validation ran: library versions, CPU and threads, so two reports can be compared fairly."""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from typing import Any


def _version(package: str) -> str | None:
    # Package metadata, not an import: the parent (a Celery worker) must not load onnxruntime.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cache
def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(*, intra_op_threads: int) -> dict[str, Any]:
    return {
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": intra_op_threads,
        "platform": platform.platform(),
    }
