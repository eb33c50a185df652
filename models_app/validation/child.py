"""Child entry point: `python -m models_app.validation.child MODEL RESULT WORK_DIR`, config JSON on stdin."""

from __future__ import annotations

import faulthandler
import json
import math
import os
import resource
import sys
import time
from typing import Any

# A few seconds between SIGXCPU (soft limit) and SIGKILL (hard limit), should SIGXCPU ever be caught.
_CPU_GRACE_SECONDS = 5


def apply_limits(limits: dict[str, Any]) -> None:
    """Sets the limits on this process before numpy, onnx or onnxruntime are imported, so they apply to all of it."""
    memory = int(limits["memory_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = math.ceil(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + _CPU_GRACE_SECONDS))
    # A crashing model must not leave gigabyte-sized core files behind on the worker's disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Replaces the result file atomically: a parent reading it after a kill never sees half a document."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(payload, handle)
    os.replace(temporary, path)


def main(argv: list[str]) -> int:
    model_path, result_path, work_dir = argv
    config_data = json.load(sys.stdin)
    apply_limits(config_data["limits"])
    faulthandler.enable()  # a segfaulting model leaves a Python stack in the captured stderr

    from models_app.validation import memory
    from models_app.validation.config import ValidationConfig
    from models_app.validation.pipeline import run_pipeline

    # The load step resets the kernel's peak-RSS mark to measure the session alone, so the process-wide
    # peak is kept here, sampled at every step boundary (before that reset, and after it).
    peak = [0]

    def progress(payload: dict[str, Any]) -> None:
        peak[0] = max(peak[0], memory.peak_rss_bytes())
        write_json(result_path, {**payload, "at": time.time(), "peak_rss_mb": round(peak[0] / 2**20, 1)})

    progress({"final": False, "current_step": None, "result": None})
    config = ValidationConfig.from_dict(config_data)
    result = run_pipeline(model_path, config, work_dir=work_dir, on_progress=progress)
    progress({"final": True, "current_step": None, "result": result.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
