"""Metric windows measured from the agent's own inference calls, one per model version per window."""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hotswap_device.protocol import HISTOGRAM_LENGTH, LATENCY_BUCKETS_MS, MAX_LATENCY_MS

# Upper bounds (ms) of the protocol's fixed histogram buckets; one open bucket follows (13 counts).
# The server refuses latencies above this; a call that slow is reported at the cap, not dropped.
DEFAULT_MAX_SAMPLES = 100_000
# Labels that arrived in a window where their version served no call wait up to this many windows' time for
# one that does (a window must count calls: the protocol caps labelled_count at inference_count); then they go.
LABELS_KEPT_WINDOWS = 60


def bucket_index(latency_ms: float) -> int:
    """The histogram bucket of a latency; bounds are inclusive upper bounds."""
    return bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def percentile_exact(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted samples: always a latency that was really measured."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def percentile_from_histogram(histogram: Sequence[int], p: float, *, max_ms: float) -> float:
    """A percentile interpolated linearly inside its bucket; the open bucket ends at the largest latency seen."""
    total = sum(histogram)
    if not total:
        return 0.0
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for index, count in enumerate(histogram):
        if seen + count >= rank:
            low = 0.0 if index == 0 else float(LATENCY_BUCKETS_MS[index - 1])
            high = float(LATENCY_BUCKETS_MS[index]) if index < len(LATENCY_BUCKETS_MS) else max(max_ms, low)
            return min(low + (high - low) * (rank - seen) / count, max_ms)
        seen += count
    return max_ms


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Accumulator:
    """One version's calls in the open window."""

    count: int = 0
    errors: int = 0
    max_ms: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_LENGTH)
    # Exact samples until the cap; None afterwards, and percentiles come from the histogram.
    samples: list[float] | None = field(default_factory=list)
    # Ground truth the application attached (Agent.feedback) to calls of this version.
    labelled: int = 0
    correct: int = 0


class MetricsRecorder:
    """Thread-safe collector: inference threads `record`, the agent loop collects closed windows.

    Windows are [k * window_seconds, (k + 1) * window_seconds) of the wall clock; a window closes at
    the first call or collection after its end, so it never outgrows window_seconds however rarely
    the agent checks in.
    """

    def __init__(
        self,
        *,
        window_seconds: float = 60.0,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < window_seconds <= 3600:
            raise ValueError("window_seconds must be in (0, 3600]: the server refuses windows longer than an hour")
        self.window_seconds = window_seconds
        self.max_samples = max_samples
        self._clock = clock
        # One lock for all threads: recording is a few list operations, far cheaper than an inference call.
        self._lock = threading.Lock()
        self._start: float | None = None
        self._open: dict[tuple[str, str], _Accumulator] = {}
        self._closed: list[dict[str, Any]] = []
        # (model, version) -> [labelled, correct, end of the window they first waited in].
        self._waiting_labels: dict[tuple[str, str], list[int]] = {}

    def record(self, model: str, version: str, latency_ms: float, ok: bool = True, *, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        latency_ms = min(max(latency_ms, 0.0), MAX_LATENCY_MS)
        with self._lock:
            acc = self._accumulator_locked(model, version, now)
            acc.count += 1
            acc.errors += 0 if ok else 1
            acc.max_ms = max(acc.max_ms, latency_ms)
            acc.histogram[bucket_index(latency_ms)] += 1
            if acc.samples is not None:
                if len(acc.samples) < self.max_samples:
                    acc.samples.append(latency_ms)
                else:
                    acc.samples = None  # memory stays bounded on a busy device

    def record_feedback(self, model: str, version: str, correct: bool, *, now: float | None = None) -> None:
        """Ground truth for an earlier call of this version: counts in the window open when it arrives, or, if the
        version serves no call in that one, in its next window with calls (within LABELS_KEPT_WINDOWS)."""
        now = self._clock() if now is None else now
        with self._lock:
            acc = self._accumulator_locked(model, version, now)
            acc.labelled += 1
            acc.correct += 1 if correct else 0

    def _accumulator_locked(self, model: str, version: str, now: float) -> _Accumulator:
        """The open window's accumulator of this version (rolling the window over first if `now` is past it)."""
        self._roll_locked(now)
        if self._start is None:
            # Aligned to the clock (whole minutes for 60 s), like the server's per-minute rollups.
            self._start = math.floor(now / self.window_seconds) * self.window_seconds
        acc = self._open.get((model, version))
        if acc is None:
            acc = self._open[(model, version)] = _Accumulator()
        return acc

    def collect(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """The windows that have closed by `now` (and are not collected yet)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._roll_locked(now)
            closed, self._closed = self._closed, []
        return closed

    def flush(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Closes the open window early (at shutdown, or in tests) and returns every closed window."""
        now = self._clock() if now is None else now
        with self._lock:
            self._roll_locked(now)
            if self._start is not None and self._open:
                # window_end must be strictly after window_start, even for a window closed at once.
                self._close_locked(max(now, self._start + 0.002))
                self._start = None
            closed, self._closed = self._closed, []
        return closed

    def _roll_locked(self, now: float) -> None:
        if self._start is None or now < self._start + self.window_seconds:
            return
        end = self._start + self.window_seconds
        self._close_locked(end)
        # The next window starts on the grid, at the boundary that contains `now`.
        self._start = end + math.floor((now - end) / self.window_seconds) * self.window_seconds

    def _close_locked(self, end: float) -> None:
        start = self._start
        assert start is not None
        too_old = end - LABELS_KEPT_WINDOWS * self.window_seconds
        self._waiting_labels = {key: labels for key, labels in self._waiting_labels.items() if labels[2] > too_old}
        for key, acc in self._open.items():
            waiting = self._waiting_labels.pop(key, None)
            if waiting:
                acc.labelled += waiting[0]
                acc.correct += waiting[1]
            if acc.count:
                self._closed.append(window_dict(*key, acc, start=start, end=end))
            elif acc.labelled:
                # Feedback for calls of an earlier window, and this version served none in this one: kept for
                # its next window with calls rather than lost.
                self._waiting_labels[key] = [acc.labelled, acc.correct, waiting[2] if waiting else end]
        self._open = {}


def window_dict(model: str, version: str, acc: _Accumulator, *, start: float, end: float) -> dict[str, Any]:
    """The protocol's metric window (PROTOCOL.md §3) for one version's calls."""
    if acc.samples is not None:
        ordered = sorted(acc.samples)
        p50, p95, p99 = (percentile_exact(ordered, p) for p in (50, 95, 99))
    else:
        p50, p95, p99 = (percentile_from_histogram(acc.histogram, p, max_ms=acc.max_ms) for p in (50, 95, 99))
    # Rounding is monotonic, so p50 <= p95 <= p99 still holds afterwards (the server checks it).
    window: dict[str, Any] = {
        "model": model, "version": version,
        "window_start": iso(start), "window_end": iso(end),
        "inference_count": acc.count, "error_count": acc.errors,
        "latency_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3)},
        "latency_histogram": list(acc.histogram),
    }
    if acc.labelled:
        # Accuracy from every label that arrived; the count is capped at the window's calls (the protocol's
        # rule), which only matters when labels for earlier calls outnumber this window's own.
        window["accuracy"] = round(acc.correct / acc.labelled, 4)
        window["labelled_count"] = min(acc.labelled, acc.count)
    return window
