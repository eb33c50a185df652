"""Steps 4 and 5 with onnxruntime: create the session, generate inputs, time inferences."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from models_app.validation import memory

# Stop timing a model whose first inferences all fail: more attempts measure nothing new.
_MAX_LEADING_FAILURES = 10
# Side by side, candidate and baseline take turns in blocks of this many inferences (who goes first alternates).
INTERLEAVE_BLOCK = 5


def create_session(model_path: str, *, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One inter-op thread and sequential execution: latency is measured the way a device runs the model.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: warnings are noise in the child's captured stderr
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


@dataclass
class LoadStats:
    """How long session creation took and how much the resident set grew at its peak."""

    load_ms: float
    memory_mb: float
    peak_reset: bool


def load(model_path: str, *, threads: int) -> tuple[ort.InferenceSession, LoadStats]:
    gc.collect()  # the structure step's ModelProto must not count as the session's memory
    before = memory.rss_bytes()
    peak_reset = memory.reset_peak()
    started = time.perf_counter()
    session = create_session(model_path, threads=threads)
    load_ms = (time.perf_counter() - started) * 1000
    growth = max(0, memory.peak_rss_bytes() - before)
    return session, LoadStats(load_ms, growth / 2**20, peak_reset)


def percentile(ordered: list[float], q: float) -> float:
    return float(np.percentile(ordered, q))


@dataclass
class BenchmarkStats:
    """Timed inferences: per-run latencies of the successful ones, failures and the loop's wall time."""

    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    attempted: int = 0
    elapsed_s: float = 0.0
    first_error: BaseException | None = None

    def metrics(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "inferences": self.attempted,
            "failed_inferences": self.failed,
            "error_rate": self.failed / self.attempted if self.attempted else None,
        }
        if self.latencies_ms:
            data.update(
                latency_p50_ms=percentile(self.latencies_ms, 50),
                latency_p95_ms=percentile(self.latencies_ms, 95),
                latency_p99_ms=percentile(self.latencies_ms, 99),
                latency_mean_ms=float(np.mean(self.latencies_ms)),
                throughput_ips=len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else None,
            )
        return data


class WarmupFailed(Exception):
    """The model could not run even once; the wrapped exception says why."""


class Runner:
    """One session fed a cycle of feeds; with feedback, outputs are fed back into inputs between calls."""

    def __init__(self, session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]],
                 feedback: dict[str, str] | None = None):
        self.session, self.feeds, self.index = session, feeds, 0
        self.feedback = [(position, feedback[node.name]) for position, node in enumerate(session.get_outputs())
                         if node.name in (feedback or {})]
        self.state: dict[str, np.ndarray] = {}
        self.stats = BenchmarkStats()

    def call(self) -> None:
        feed = self.feeds[self.index % len(self.feeds)]
        self.index += 1
        outputs = self.session.run(None, {**feed, **self.state} if self.state else feed)
        for position, name in self.feedback:
            self.state[name] = outputs[position]

    def warm_up(self, runs: int) -> None:
        for _ in range(runs):
            try:
                self.call()
            except Exception as exc:
                raise WarmupFailed(str(exc)) from exc

    def timed(self, runs: int) -> None:
        stats, clock = self.stats, time.perf_counter_ns
        started = clock()
        for _ in range(runs):
            if stats.failed >= _MAX_LEADING_FAILURES and not stats.latencies_ms:
                break
            stats.attempted += 1
            begin = clock()
            try:
                self.call()
            except Exception as exc:
                stats.failed += 1
                stats.first_error = stats.first_error or exc
                continue
            stats.latencies_ms.append((clock() - begin) / 1e6)
        stats.elapsed_s += (clock() - started) / 1e9


def benchmark(runner: Runner, *, warmup: int, runs: int, baseline: Runner | None = None) -> BenchmarkStats:
    """Times the runner; with a baseline, both in turns of INTERLEAVE_BLOCK on the same inputs, in this process."""
    runner.warm_up(warmup)
    if baseline is None:
        runner.timed(runs)
        return runner.stats
    try:
        baseline.warm_up(warmup)
    except WarmupFailed as exc:
        baseline.stats.first_error = exc.__cause__ or exc
        baseline = None
    done = 0
    while done < runs:
        block = min(INTERLEAVE_BLOCK, runs - done)
        turns = (runner, baseline) if (done // INTERLEAVE_BLOCK) % 2 == 0 else (baseline, runner)
        for turn in turns:
            if turn is not None:
                turn.timed(block)
        done += block
    return runner.stats
