"""The eight validation steps, run in-process in order; run_isolated runs this in a limited child process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models_app.validation import accuracy, gates, runtime
from models_app.validation.config import ValidationConfig
from models_app.validation.environment import environment
from models_app.validation.errors import clean_message, describe, is_allocation_failure, memory_limit_reason
from models_app.validation.integrity import check_integrity
from models_app.validation.result import STEP_NAMES, Outcome, PipelineResult, StepResult, StepStatus
from models_app.validation.signature import check_signature
from models_app.validation.structure import check_structure

Progress = Callable[[dict[str, Any]], None]


class Report:
    """Builds a PipelineResult step by step, telling on_progress which step runs so a crash can be placed."""

    def __init__(self, config: ValidationConfig, on_progress: Progress | None = None):
        self.config = config
        self.result = PipelineResult(outcome=Outcome.ERROR, summary="",
                                     environment=environment(intra_op_threads=config.intra_op_threads))
        self._on_progress = on_progress

    def progress(self, current_step: str | None) -> None:
        if self._on_progress is not None:
            self._on_progress({"final": False, "current_step": current_step, "result": self.result.to_dict()})

    @contextmanager
    def step(self, name: str) -> Iterator[StepResult]:
        step = StepResult(name)
        self.progress(name)
        started = time.perf_counter()
        try:
            yield step
        except Exception as exc:
            step.fail(describe(exc, memory_mb=self.config.limits.memory_mb), error=type(exc).__name__)
        finally:
            step.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            self.result.steps.append(step)
            self.progress(None)

    def failed(self, name: str) -> bool:
        return self.result.step(name).status == StepStatus.FAILED

    def skip_rest(self, detail: str) -> None:
        done = {step.name for step in self.result.steps}
        self.result.steps += [StepResult(name, StepStatus.NOT_EXECUTED, 0.0, detail)
                              for name in STEP_NAMES if name not in done]

    def finish(self) -> PipelineResult:
        result = self.result
        if not result.gates:
            result.gates = gates.evaluate(self.config.gates, result.metrics, result.baseline_deltas)
        failed_steps = [step for step in result.steps if step.status == StepStatus.FAILED and step.name != "gates"]
        failed_gates = [gate for gate in result.gates if gate.passed is False]
        if failed_steps or failed_gates:
            result.outcome = Outcome.FAILED
            reasons = [f"{step.name}: {step.detail}" for step in failed_steps]
            reasons += [f"gate {gate.name}: {gate.detail}" for gate in failed_gates]
            result.summary = "failed: " + "; ".join(reasons)
        elif not self.config.runnable:
            result.outcome = Outcome.NOT_EXECUTED
            result.summary = (f"not executed: {self.config.framework} models cannot run here; integrity and format "
                              "were checked, and an Admin must approve the version before it is distributed")
        else:
            result.outcome = Outcome.PASSED
            skipped = [step.name for step in result.steps if step.status == StepStatus.SKIPPED]
            applicable = [gate for gate in result.gates if gate.passed is not None]
            result.summary = (f"passed: {len(result.steps) - len(skipped)} steps passed"
                              + (f" ({', '.join(skipped)} not applicable)" if skipped else "")
                              + f"; {len(applicable)} of {len(result.gates)} gates applicable, all passed")
        return result


def run_pipeline(model_path: str, config: ValidationConfig, *, work_dir: str | Path,
                 on_progress: Progress | None = None) -> PipelineResult:
    """Validates one artifact in this process; never raises for a bad model."""
    report = Report(config, on_progress)
    metrics = report.result.metrics
    with report.step("integrity") as step:
        check_integrity(step, model_path, expected_sha256=config.expected_sha256, expected_size=config.expected_size)
    if report.failed("integrity"):
        report.skip_rest("not run: the artifact failed its integrity check")
        return report.finish()

    if not config.runnable:
        with report.step("format") as step:
            step.detail = f"{config.framework} artifact, detected at upload as {config.detected_format}"
            step.data.update(framework=config.framework, detected_format=config.detected_format,
                             details=config.format_details)
        report.skip_rest(f"not executed: {config.framework} models cannot be run on this validator")
        return report.finish()

    structure = None
    with report.step("format") as step:
        structure = check_structure(step, model_path, detected_format=config.detected_format, work_dir=Path(work_dir))
    if structure is None:
        report.skip_rest("not run: the model's format or structure is invalid")
        return report.finish()
    model, runnable_path = structure

    with report.step("signature") as step:
        check_signature(step, model, declared_inputs=config.declared_inputs, declared_outputs=config.declared_outputs)
    del model, structure  # before loading, so the load step's memory footprint is the session's alone

    session = None
    with report.step("load") as step:
        try:
            session, loaded = runtime.load(runnable_path, threads=config.intra_op_threads)
        except Exception as exc:
            message = clean_message(exc)
            if isinstance(exc, MemoryError) or is_allocation_failure(message):
                step.fail(f"{memory_limit_reason(config.limits.memory_mb)} while loading ({message})")
            else:
                step.fail(f"could not load: {message}")
        else:
            metrics.update(load_ms=round(loaded.load_ms, 3), memory_mb=round(loaded.memory_mb, 3))
            step.data.update(peak_rss_reset=loaded.peak_reset, providers=session.get_providers())
            step.detail = f"session created in {loaded.load_ms:.1f} ms; peak RSS grew {loaded.memory_mb:.1f} MB"
    if session is None:
        report.skip_rest("not run: the model could not be loaded")
        return report.finish()

    with report.step("benchmark") as step:
        _benchmark(step, session, config, metrics)

    if config.test_set_path is None:
        report.result.steps.append(StepResult("accuracy", StepStatus.SKIPPED, 0.0, "no labelled test set was given"))
    else:
        with report.step("accuracy") as step:
            _accuracy(step, session, config, metrics)

    if config.baseline is None:
        report.result.steps.append(StepResult("baseline", StepStatus.SKIPPED, 0.0, "no baseline was given"))
    else:
        with report.step("baseline") as step:
            _baseline(step, config.baseline, report.result)

    with report.step("gates") as step:
        results = gates.evaluate(config.gates, metrics, report.result.baseline_deltas)
        report.result.gates = results
        failing = [gate for gate in results if gate.passed is False]
        applicable = [gate for gate in results if gate.passed is not None]
        if failing:
            step.fail(f"{len(failing)} of {len(applicable)} applicable gates failed: "
                      + "; ".join(f"{gate.name}: {gate.detail}" for gate in failing))
        else:
            step.detail = f"{len(applicable)} of {len(results)} gates applicable, all passed"
    return report.finish()


def _benchmark(step: StepResult, session: Any, config: ValidationConfig, metrics: dict[str, Any]) -> None:
    memory_mb = config.limits.memory_mb
    feed = runtime.make_feed(session, config.symbolic_dims)
    step.data.update(input_shapes={name: list(array.shape) for name, array in feed.items()},
                     warmup_runs=config.warmup_runs, benchmark_runs=config.benchmark_runs)
    try:
        stats = runtime.benchmark(session, feed, warmup=config.warmup_runs, runs=config.benchmark_runs)
    except runtime.WarmupFailed as exc:
        metrics.update(inferences=1, failed_inferences=1, error_rate=1.0)
        cause = exc.__cause__ or exc
        step.fail(f"the model failed on its first inference: {describe(cause, memory_mb=memory_mb)}")
        return
    metrics.update({key: round(value, 4) if isinstance(value, float) else value
                    for key, value in stats.metrics().items()})
    if not stats.latencies_ms:
        assert stats.first_error is not None
        step.fail(f"all {stats.attempted} timed inferences failed: {describe(stats.first_error, memory_mb=memory_mb)}")
        return
    step.detail = (f"{len(stats.latencies_ms)} timed inferences after {config.warmup_runs} warm-up: "
                   f"p50 {metrics['latency_p50_ms']:.3f} ms, p95 {metrics['latency_p95_ms']:.3f} ms, "
                   f"p99 {metrics['latency_p99_ms']:.3f} ms, {metrics['throughput_ips']:.1f} inferences/s")
    if stats.failed:
        step.detail += (f"; {stats.failed} of {stats.attempted} inferences failed "
                        f"(first: {describe(stats.first_error or Exception(), memory_mb=memory_mb)})")


def _accuracy(step: StepResult, session: Any, config: ValidationConfig, metrics: dict[str, Any]) -> None:
    assert config.test_set_path is not None
    try:
        found = accuracy.evaluate(session, config.test_set_path, config.accuracy_metric)
    except accuracy.TestSetError as exc:
        step.fail(f"the test set does not fit the model: {exc}")
        return
    metrics.update(accuracy=found["accuracy"], accuracy_samples=found["accuracy_samples"])
    step.data.update(found)
    step.detail = (f"{config.accuracy_metric} accuracy {found['accuracy'] * 100:.2f}% on "
                   f"{found['accuracy_samples']} samples ({found['correct']} correct)")


def _baseline(step: StepResult, baseline: dict[str, Any], result: PipelineResult) -> None:
    deltas = gates.baseline_deltas(result.metrics, baseline)
    result.baseline_deltas.update(deltas)
    step.data.update(baseline_latency_p99_ms=baseline.get("latency_p99_ms"), baseline_accuracy=baseline.get("accuracy"))
    parts = []
    if deltas["latency_p99_increase"] is not None:
        parts.append(f"p99 latency {result.metrics['latency_p99_ms']:.3f} ms against {baseline['latency_p99_ms']:.3f} "
                     f"ms ({deltas['latency_p99_increase'] * 100:+.1f}%)")
    else:
        parts.append("no p99 latency on both sides to compare")
    if deltas["accuracy_drop"] is not None:
        parts.append(f"accuracy {result.metrics['accuracy'] * 100:.2f}% against {baseline['accuracy'] * 100:.2f}% "
                     f"(drop {deltas['accuracy_drop'] * 100:.2f} pp)")
    else:
        parts.append("no accuracy on both sides to compare")
    step.detail = "; ".join(parts)
