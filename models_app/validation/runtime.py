"""Steps 4 and 5 with onnxruntime: create the session, generate inputs, time inferences."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from models_app.validation import memory

# onnxruntime's type strings for the tensors we can generate inputs for.
ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}  # fmt: skip
# Stop timing a model whose first inferences all fail: more attempts measure nothing new.
_MAX_LEADING_FAILURES = 10
_SEED = 0


class UnsupportedInput(ValueError):
    """An input whose type we cannot generate data for (sequences, maps, bfloat16, ...)."""


def numpy_type(node: Any) -> type[np.generic]:
    dtype = ORT_TO_NUMPY.get(node.type)
    if dtype is None:
        raise UnsupportedInput(f"input {node.name!r} has type {node.type}; inputs can only be generated "
                               "for numeric, bool and string tensors")
    return dtype


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


def resolve_shape(shape: list[Any], symbolic_dims: dict[str, int]) -> tuple[int, ...]:
    """Fixed dims as they are, symbolic dims from the configuration, anything else 1."""
    resolved = []
    for dim in shape:
        if isinstance(dim, int) and dim >= 0:
            resolved.append(dim)
        elif isinstance(dim, str):
            resolved.append(symbolic_dims.get(dim, 1))
        else:
            resolved.append(1)
    return tuple(resolved)


def make_feed(session: ort.InferenceSession, symbolic_dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Deterministic inputs that respect the session's signature."""
    rng = np.random.default_rng(_SEED)
    feed = {}
    for node in session.get_inputs():
        dtype = numpy_type(node)
        shape = resolve_shape(node.shape, symbolic_dims)
        if np.issubdtype(dtype, np.floating):
            feed[node.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.object_:
            feed[node.name] = np.full(shape, "", dtype=object)
        else:
            # Zeros: integer inputs are often indices or counts, and 0 is valid for every one of them.
            feed[node.name] = np.zeros(shape, dtype=dtype)
    return feed


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


def benchmark(session: ort.InferenceSession, feed: dict[str, np.ndarray], *, warmup: int, runs: int) -> BenchmarkStats:
    run = session.run
    for _ in range(warmup):
        try:
            run(None, feed)
        except Exception as exc:
            raise WarmupFailed(str(exc)) from exc
    stats = BenchmarkStats()
    clock = time.perf_counter_ns
    started = clock()
    for _ in range(runs):
        stats.attempted += 1
        begin = clock()
        try:
            run(None, feed)
        except Exception as exc:
            stats.failed += 1
            stats.first_error = stats.first_error or exc
            if stats.failed >= _MAX_LEADING_FAILURES and not stats.latencies_ms:
                break
            continue
        stats.latencies_ms.append((clock() - begin) / 1e6)
    stats.elapsed_s = (clock() - started) / 1e9
    return stats
