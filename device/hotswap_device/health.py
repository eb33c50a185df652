"""Device health for the check-in (CPU, memory, disk %): psutil when installed, else /proc and os calls."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

try:  # psutil is not on every device image, so it is optional
    import psutil
except ImportError:  # pragma: no cover - depends on the device image
    psutil = None


def _clamp(value: float) -> float:
    return round(min(max(value, 0.0), 100.0), 1)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB; empty where there is no /proc."""
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.split():
                values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


def memory_mb() -> int | None:
    if psutil is not None:
        return int(psutil.virtual_memory().total // (1024 * 1024))
    total = meminfo().get("MemTotal")
    return total // 1024 if total else None


def disk_percent(path: str | os.PathLike[str]) -> float | None:
    try:
        stats = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    total = stats.f_blocks * stats.f_frsize
    if not total:
        return None
    # f_bavail (not f_bfree): what an unprivileged agent can still write, as `df` reports it.
    used = total - stats.f_bavail * stats.f_frsize
    return _clamp(used / total * 100)


def snapshot(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{cpu_percent, memory_percent, disk_percent}; a value that cannot be measured is left out."""
    health: dict[str, Any] = {}
    if psutil is not None:
        health["cpu_percent"] = _clamp(psutil.cpu_percent(interval=None))
        health["memory_percent"] = _clamp(psutil.virtual_memory().percent)
    else:
        with contextlib.suppress(OSError, AttributeError):  # no load average on this platform
            # The 1-minute load per core, as a percentage: a fair CPU figure without sampling twice.
            health["cpu_percent"] = _clamp(os.getloadavg()[0] / (os.cpu_count() or 1) * 100)
        info = meminfo()
        if info.get("MemTotal") and "MemAvailable" in info:
            health["memory_percent"] = _clamp((info["MemTotal"] - info["MemAvailable"]) / info["MemTotal"] * 100)
    disk = disk_percent(data_dir)
    if disk is not None:
        health["disk_percent"] = disk
    return health
