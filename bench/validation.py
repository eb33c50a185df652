"""Validation bench: pipeline latency percentiles vs a bare onnxruntime loop, and whole isolated validations.

(1) The same model and the same generated inputs timed twice per repeat: by a bare onnxruntime loop in this
process, and by run_isolated's benchmark step in its child; the ratio of their p50 and p99 (target <= 1.10).
(2) The same for a model with dynamic height and width validated at a declared 640x640 input profile: the
pipeline's figures against a bare loop at the same shapes (target <= 1.10), and the whole validation's seconds.
(3) The wall time of a complete run_isolated validation of a ~100 MB model whose big initializer the graph
uses. Medians of --repeat runs.

    python bench/validation.py [--runs 1000] [--repeat 3] [--size-mb 100] [--side 640]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._stack import parse_args  # noqa: E402
from models_app.validation import ValidationConfig, feeds, run_isolated  # noqa: E402
from models_app.validation.runtime import create_session  # noqa: E402
from tests.artifacts import big_weight_onnx_bytes, slow_onnx_bytes, spatial_onnx_bytes  # noqa: E402

RATIO_TARGET = 1.10
WARMUP = 10


def bare_loop(model_path: str, runs: int, profile: dict | None = None) -> tuple[float, float]:
    """p50 and p99 in ms of `runs` plain session.run calls after WARMUP, with the pipeline's session options."""
    session = create_session(model_path, threads=1)
    feed = feeds.plan(session, profile).feeds[0]
    for _ in range(WARMUP):
        session.run(None, feed)
    latencies = []
    for _ in range(runs):
        begin = time.perf_counter_ns()
        session.run(None, feed)
        latencies.append((time.perf_counter_ns() - begin) / 1e6)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def pipeline_loop(model_path: str, runs: int, profile: dict | None = None, walls: list | None = None):
    config = ValidationConfig(warmup_runs=WARMUP, benchmark_runs=runs, intra_op_threads=1,
                              profiles=[profile] if profile else [])
    started = time.perf_counter()
    result = run_isolated(model_path, config)
    if walls is not None:
        walls.append(time.perf_counter() - started)
    if result.metrics["latency_p50_ms"] is None:
        raise SystemExit(f"the pipeline did not benchmark the model: {result.summary}")
    if profile and result.outcome != "passed":
        print(f"    note: outcome {result.outcome}: {result.summary}")
    return result.metrics["latency_p50_ms"], result.metrics["latency_p99_ms"]


def latency_overhead(scratch: Path, runs: int, repeat: int, *, profile: dict | None = None, title: str = "",
                     model_bytes: bytes | None = None) -> None:
    model = scratch / "latency.onnx"
    model.write_bytes(model_bytes or slow_onnx_bytes(size=512, depth=4, batch=16))
    bare, piped, walls = [], [], []
    for i in range(repeat):
        # Alternating which goes first, so neither always gets the quieter moment.
        if i % 2:
            piped.append(pipeline_loop(str(model), runs, profile, walls))
            bare.append(bare_loop(str(model), runs, profile))
        else:
            bare.append(bare_loop(str(model), runs, profile))
            piped.append(pipeline_loop(str(model), runs, profile, walls))
    print(f"{title or '(1) latency'}: pipeline benchmark step vs bare onnxruntime loop, {runs} runs after {WARMUP} "
          f"warm-up, median of {repeat}")
    # p99 of a sub-millisecond model is a few preempted runs on a busy machine: the load says how busy it was.
    print(f"    load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"    {'':6} {'bare ms':>10} {'pipeline ms':>12} {'ratio':>7} {'target':>7}")
    for index, name in enumerate(("p50", "p99")):
        b = statistics.median(sample[index] for sample in bare)
        p = statistics.median(sample[index] for sample in piped)
        ratio = p / b
        verdict = "ok" if ratio <= RATIO_TARGET else "MISSED"
        print(f"    {name:6} {b:10.3f} {p:12.3f} {ratio:7.3f} {RATIO_TARGET:7.2f} {verdict}")
    if profile:
        print(f"    whole isolated validation at the profile: {statistics.median(walls):.2f} s wall (median)")


def declared_profile(scratch: Path, runs: int, repeat: int, side: int) -> None:
    profile = {"name": f"{side}x{side}", "inputs": {"x": {"shape": [1, 3, side, side]}}}
    latency_overhead(scratch, runs, repeat, profile=profile, model_bytes=spatial_onnx_bytes(),
                     title=f"(2) dynamic height x width validated at a declared {side}x{side} profile")


def whole_validation(scratch: Path, size_mb: int, repeat: int) -> None:
    model = scratch / "big.onnx"
    model.write_bytes(big_weight_onnx_bytes(megabytes=size_mb))
    size = model.stat().st_size
    walls, reports = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        result = run_isolated(str(model), ValidationConfig())
        walls.append(time.perf_counter() - started)
        reports.append(result)
        if result.outcome != "passed":
            print(f"    note: outcome {result.outcome}: {result.summary}")
    middle = reports[walls.index(statistics.median_low(walls))]
    print(f"(3) whole run_isolated validation of a {size / 2**20:.0f} MiB model (100 inferences after 10 warm-up), "
          f"median of {repeat}: {statistics.median(walls):.2f} s wall")
    print(f"    {'step':10} {'ms':>9}")
    for step in middle.steps:
        print(f"    {step.name:10} {step.duration_ms:9.1f}  {step.status}")
    metrics = middle.metrics
    print(f"    load {metrics['load_ms']:.0f} ms, memory footprint {metrics['memory_mb']:.0f} MB, "
          f"p99 {metrics['latency_p99_ms']:.2f} ms; child CPU {middle.isolation['cpu_seconds']:.2f} s, "
          f"peak RSS {middle.isolation['peak_rss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--side", type=int, default=640, help="height and width of the declared profile")
    args = parse_args(parser, smoke={"runs": 20, "repeat": 1, "size_mb": 1, "side": 64})
    with tempfile.TemporaryDirectory(prefix="hotswap-bench-validation-") as scratch:
        latency_overhead(Path(scratch), args.runs, args.repeat)
        declared_profile(Path(scratch), max(args.runs // 5, 20), args.repeat, args.side)
        whole_validation(Path(scratch), args.size_mb, args.repeat)


if __name__ == "__main__":
    main()
