"""Keeps long-lived processes from holding on to the memory of large, short-lived buffers."""

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def return_large_buffers_to_os(threshold_bytes: int = 1024 * 1024) -> None:
    """Serve allocations >= threshold with mmap so freeing them gives the pages back at once.

    glibc raises its mmap threshold dynamically after large frees, after which multi-MB upload
    parts come from per-thread heaps that never shrink: a web worker's RSS would stay at its
    peak after every big upload. A fixed threshold turns that off.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        if not libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes):
            logger.warning("mallopt(M_MMAP_THRESHOLD) was refused")
        # Each thread (request threads, S3 part uploaders) would otherwise get its own heap arena,
        # and memory freed in one is not reusable by the others.
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return
