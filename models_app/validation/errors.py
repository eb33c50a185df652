"""Turns exceptions from onnx, onnxruntime and numpy into short, readable reasons."""

from __future__ import annotations

import re

# What an allocation refused by RLIMIT_AS looks like from onnxruntime, the C++ runtime, glibc and Python.
_ALLOCATION_FAILURES = ("failed to allocate memory", "bad_alloc", "cannot allocate memory", "memoryerror",
                        "out of memory", "unable to allocate")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
# onnxruntime prefixes messages with its source location and the C++ function's signature: noise to a reader.
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src/\S+:\d+ [^()]*\([^()]*\)\s*")
_BUFFER_SIZE = re.compile(r"buffer of size (\d+)")
_MAX_CHARS = 600


def is_allocation_failure(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _ALLOCATION_FAILURES)


def clean_message(exc: BaseException) -> str:
    message = _ORT_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
    message = _ORT_SOURCE.sub("", " ".join(message.split()))
    message = _BUFFER_SIZE.sub(lambda match: f"{match.group(0)} ({int(match.group(1)) / 2**30:.1f} GiB)", message)
    return message if len(message) <= _MAX_CHARS else message[: _MAX_CHARS - 1] + "…"


def memory_limit_reason(memory_mb: int) -> str:
    return f"exceeded the memory limit of {memory_mb} MB"


def describe(exc: BaseException, *, memory_mb: int) -> str:
    message = clean_message(exc)
    if isinstance(exc, MemoryError) or is_allocation_failure(message):
        return f"{memory_limit_reason(memory_mb)} ({message})"
    return message
