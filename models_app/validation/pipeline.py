"""The eight validation steps, run in-process in order; run_isolated runs this in a limited child process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models_app.validation import accuracy, feeds, gates, runtime
from models_app.validation.config import ValidationConfig
from models_app.validation.environment import environment
from models_app.validation.errors import clean_message, describe, is_allocation_failure, memory_limit_reason
from models_app.validation.integrity import check_integrity
from models_app.validation.profiles import HOW_TO_DECLARE
from models_app.validation.result import STEP_NAMES, GateResult, Outcome, PipelineResult, StepResult, StepStatus
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
        failed_gates = [(gate.name, gate.detail) for gate in result.gates if gate.passed is False]
        failed_gates += [(f"{gate['name']} ({profile['name']})", gate["detail"]) for profile in result.profiles[1:]
                         for gate in profile.get("gates", []) if gate["passed"] is False]
        guessed = [profile for profile in result.profiles if profile.get("source") == "guessed"]
        if failed_steps or failed_gates:
            result.outcome = Outcome.FAILED
            reasons = [f"{step.name}: {step.detail}" for step in failed_steps]
            reasons += [f"gate {name}: {detail}" for name, detail in failed_gates]
            result.summary = "failed: " + "; ".join(reasons)
        elif not self.config.runnable:
            result.outcome = Outcome.NOT_EXECUTED
            result.summary = (f"not executed: {self.config.framework} models cannot run here; integrity and format "
                              "were checked, and an Admin must approve the version before it is distributed")
        elif guessed:
            result.outcome = Outcome.NEEDS_APPROVAL
            dims = [f"{guess['input']}[{guess['axis']}]{' (' + guess['dim'] + ')' if guess['dim'] else ''}="
                    f"{guess['value']}" for profile in guessed for guess in profile["guessed"]
                    if guess["kind"] == "dim"]
            result.summary = (f"needs approval: shapes guessed ({', '.join(dims)}), so the latency and throughput "
                              "gates decide nothing; the model loaded and ran, and every other check passed. To "
                              f"measure it at real shapes, {HOW_TO_DECLARE}")
        else:
            result.outcome = Outcome.PASSED
            skipped = [step.name for step in result.steps if step.status == StepStatus.SKIPPED]
            applicable = [gate for gate in result.gates if gate.passed is not None]
            result.summary = (f"passed: {len(result.steps) - len(skipped)} steps passed"
                              + (f" ({', '.join(skipped)} not applicable)" if skipped else "")
                              + f"; {len(applicable)} of {len(result.gates)} gates applicable, all passed"
                              + ("; at input profile(s) " + ", ".join(f"{p['name']} ({p['source']})"
                                                                        for p in result.profiles)
                                 if result.profiles else ""))
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
    hints = report.result.step("signature").data.get("graph_hints", {})
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

    bench = Bench(config, report.result, hints)
    with report.step("benchmark") as step:
        bench.run(step, session)

    if config.test_set_path is None:
        report.result.steps.append(StepResult("accuracy", StepStatus.SKIPPED, 0.0, "no test set was given"))
    else:
        with report.step("accuracy") as step:
            bench.check_test_set(step, session)

    if bench.baseline is None:
        report.result.steps.append(StepResult("baseline", StepStatus.SKIPPED, 0.0, bench.baseline_missing))
    else:
        with report.step("baseline") as step:
            bench.compare_baseline(step, session)

    with report.step("gates") as step:
        results = bench.judge()
        failing = [gate for gate in results if gate.passed is False]
        applicable = [gate for gate in results if gate.passed is not None]
        if failing:
            step.fail(f"{len(failing)} of {len(applicable)} applicable gates failed: "
                      + "; ".join(f"{gate.name}: {gate.detail}" for gate in failing))
        else:
            step.detail = f"{len(applicable)} of {len(results)} gates applicable, all passed"
    return report.finish()


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}


class Bench:
    """The benchmark, test-set and baseline steps over every input profile, and their gates."""

    def __init__(self, config: ValidationConfig, result: PipelineResult, hints: dict[str, dict[str, list]]):
        self.config, self.result, self.hints = config, result, hints
        self.baseline: Any = None
        self.baseline_missing = "no baseline was given"
        self.plans: list[feeds.FeedPlan] = []
        self.specs: list[dict[str, Any]] = []
        self.test_set: feeds.SampleSet | None = None

    def _profiles(self) -> list[dict[str, Any]]:
        if self.config.profiles:
            return self.config.profiles
        if self.config.test_set_path:
            return [{"name": "test set", "samples_path": self.config.test_set_path}]
        return [{"name": "default"}]

    def _load_baseline(self) -> None:
        if self.config.baseline_path is None:
            return
        try:
            self.baseline = runtime.create_session(self.config.baseline_path, threads=self.config.intra_op_threads)
        except Exception as exc:
            self.baseline_missing = f"the baseline {self.config.baseline_model_id} could not be loaded: " \
                                    f"{clean_message(exc)}"

    def run(self, step: StepResult, session: Any) -> None:
        self._load_baseline()  # after the load step: the memory figure is the candidate's alone
        memory_mb, failures = self.config.limits.memory_mb, []
        for profile in self._profiles():
            name = profile.get("name", "default")
            entry: dict[str, Any] = {"name": name, "source": None, "inputs": [], "guessed": [], "metrics": {},
                                     "baseline": None, "gates": [], "error": None}
            self.result.profiles.append(entry)
            try:
                plan = feeds.plan(session, profile, samples_path=profile.get("samples_path"), hints=self.hints)
            except (feeds.SampleError, feeds.UnsupportedInput) as exc:
                entry["error"] = f"the inputs could not be made: {exc}"
                failures.append(f"profile {name}: {entry['error']}")
                continue
            except Exception as exc:  # an unreadable sample file
                entry["error"] = f"the sample inputs could not be read: {describe(exc, memory_mb=memory_mb)}"
                failures.append(f"profile {name}: {entry['error']}")
                continue
            self.plans.append(plan)
            self.specs.append(profile)
            entry.update(plan.summary())
            runner = runtime.Runner(session, plan.feeds, plan.feedback)
            other = runtime.Runner(self.baseline, plan.feeds, plan.feedback) if self.baseline is not None else None
            try:
                stats = runtime.benchmark(runner, warmup=self.config.warmup_runs, runs=self.config.benchmark_runs,
                                          baseline=other)
            except runtime.WarmupFailed as exc:
                entry["metrics"] = {"inferences": 1, "failed_inferences": 1, "error_rate": 1.0}
                entry["error"] = f"the model failed on its first inference: " \
                                 f"{describe(exc.__cause__ or exc, memory_mb=memory_mb)}"
                failures.append(f"profile {name} ({_shapes(plan)}): {entry['error']}")
                continue
            entry["metrics"] = _rounded(stats.metrics())
            if other is not None:
                entry["baseline"] = {"metrics": _rounded(other.stats.metrics()),
                                     "deltas": gates.side_by_side(stats.latencies_ms, other.stats.latencies_ms)}
                if other.stats.first_error is not None and not other.stats.latencies_ms:
                    entry["baseline"]["error"] = f"the baseline failed at these inputs: " \
                                                 f"{describe(other.stats.first_error, memory_mb=memory_mb)}"
            if not stats.latencies_ms:
                entry["error"] = f"all {stats.attempted} timed inferences failed: " \
                                 f"{describe(stats.first_error or Exception(), memory_mb=memory_mb)}"
                failures.append(f"profile {name}: {entry['error']}")
        if self.result.profiles and self.result.profiles[0]["metrics"]:
            self.result.metrics.update(self.result.profiles[0]["metrics"])
            first = self.result.profiles[0]
            if first["baseline"]:
                self.result.baseline_deltas.update(first["baseline"]["deltas"])
        step.data.update(warmup_runs=self.config.warmup_runs, benchmark_runs=self.config.benchmark_runs,
                         input_shapes={item.name: item.shape for plan in self.plans[:1] for item in plan.inputs})
        lines = [self._line(entry) for entry in self.result.profiles if not entry["error"]]
        if failures:
            step.fail("; ".join(failures) + ("; " + "; ".join(lines) if lines else ""))
        else:
            step.detail = "; ".join(lines)

    def _line(self, entry: dict[str, Any]) -> str:
        metrics = entry["metrics"]
        shapes = ", ".join(f"{item['name']} {item['shape']}" for item in entry["inputs"])
        line = (f"{entry['name']} ({'shapes guessed: ' if entry['source'] == 'guessed' else ''}{shapes}): "
                f"{metrics.get('inferences') or 0} timed inferences after {self.config.warmup_runs} warm-up: "
                f"p50 {metrics.get('latency_p50_ms', 0):.3f} ms, p99 {metrics.get('latency_p99_ms', 0):.3f} ms, "
                f"{metrics.get('throughput_ips') or 0:.1f} inferences/s")
        if metrics.get("failed_inferences"):
            line += f", {metrics['failed_inferences']} failed"
        return line

    def check_test_set(self, step: StepResult, session: Any) -> None:
        metrics = self.result.metrics
        try:
            self.test_set = accuracy.load(self.config.test_set_path, session)
            found = accuracy.evaluate(session, self.test_set, self.config.accuracy_metric,
                                      self.config.output_tolerances)
        except accuracy.TestSetError as exc:
            step.fail(f"the test set does not fit the model: {exc}")
            return
        step.data.update(found)
        parts = []
        if "accuracy" in found:
            metrics.update(accuracy=found["accuracy"], accuracy_samples=found["samples"])
            parts.append(f"{self.config.accuracy_metric} accuracy {found['accuracy'] * 100:.2f}% on "
                         f"{found['samples']} samples ({found['correct']} correct)")
        if "output_match" in found:
            metrics.update(output_match=found["output_match"], output_match_samples=found["samples"])
            parts.append(f"outputs {', '.join(found['checked_outputs'])} within tolerance on "
                         f"{found['matched']} of {found['samples']} samples ({found['output_match'] * 100:.2f}%)")
        if not parts:
            step.status = StepStatus.SKIPPED
            parts.append("the test set holds no labels and no expected outputs: its inputs served as sample inputs")
        step.detail = "; ".join(parts)

    def compare_baseline(self, step: StepResult, session: Any) -> None:
        deltas, parts = self.result.baseline_deltas, []
        step.data["baseline_model_id"] = self.config.baseline_model_id
        for entry in self.result.profiles:
            side = entry.get("baseline")
            if not side:
                continue
            d = side["deltas"]
            if side.get("error"):
                parts.append(f"{entry['name']}: {side['error']}")
            elif d["latency_increase"] is not None:
                parts.append(f"{entry['name']}: median latency {entry['metrics']['latency_p50_ms']:.3f} ms against "
                             f"{side['metrics']['latency_p50_ms']:.3f} ms side by side "
                             f"({d['latency_increase'] * 100:+.1f}%, p = {d['latency_p_value']:.2g})")
        feeds_for_agreement = [self.test_set.feed(i) for i in range(len(self.test_set))] if self.test_set else \
            (self.plans[0].feeds if self.plans else [])
        if self.plans and len(feeds_for_agreement) == 1:
            # One generated feed says little: a few more draws of the same shapes.
            feeds_for_agreement = [feeds.plan(session, self.specs[0], seed=seed, hints=self.hints).feeds[0]
                                   for seed in range(16)] if self.plans[0].samples is None else feeds_for_agreement
        if feeds_for_agreement:
            try:
                agreed = accuracy.agreement(session, self.baseline, feeds_for_agreement, self.config.output_tolerances)
            except Exception as exc:
                parts.append(f"outputs not compared: the baseline failed on the same inputs "
                             f"({describe(exc, memory_mb=self.config.limits.memory_mb)})")
            else:
                deltas["output_agreement"] = agreed["agreement"]
                step.data["agreement"] = agreed
                if agreed["agreement"] is not None:
                    parts.append(f"outputs agree with the baseline's within tolerance on "
                                 f"{agreed['agreement'] * 100:.1f}% of {agreed['samples']} samples")
        if self.test_set is not None and self.test_set.labels is not None \
                and self.result.metrics.get("accuracy") is not None:
            try:
                base = accuracy.evaluate(self.baseline, self.test_set, self.config.accuracy_metric, {})
            except Exception as exc:
                parts.append(f"baseline accuracy not measured: {clean_message(exc)}")
            else:
                deltas["accuracy_drop"] = base["accuracy"] - self.result.metrics["accuracy"]
                parts.append(f"accuracy {self.result.metrics['accuracy'] * 100:.2f}% against "
                             f"{base['accuracy'] * 100:.2f}% (drop {deltas['accuracy_drop'] * 100:.2f} pp)")
        step.detail = "; ".join(parts) or "nothing to compare"

    def judge(self) -> list[GateResult]:
        """Gates per profile on its own figures; the report's gates are the first profile's."""
        shared = {key: self.result.metrics.get(key) for key in ("load_ms", "memory_mb", "accuracy", "output_match")}
        shared_deltas = {key: self.result.baseline_deltas.get(key) for key in ("accuracy_drop", "output_agreement")}
        for entry in self.result.profiles:
            deltas = {**shared_deltas, **((entry.get("baseline") or {}).get("deltas") or {})}
            entry["gates"] = [asdict(gate) for gate in gates.evaluate(
                self.config.gates, {**entry["metrics"], **shared}, deltas,
                shapes_guessed=entry["source"] == "guessed")]
        first = self.result.profiles[0] if self.result.profiles else None
        self.result.gates = gates.evaluate(self.config.gates, self.result.metrics, self.result.baseline_deltas,
                                           shapes_guessed=bool(first and first["source"] == "guessed"))
        others = [GateResult(f"{gate['name']} ({entry['name']})", gate["threshold"], gate["measured"], gate["passed"],
                             gate["detail"]) for entry in self.result.profiles[1:] for gate in entry["gates"]
                  if gate["passed"] is False]
        return self.result.gates + others


def _shapes(plan: feeds.FeedPlan) -> str:
    return ", ".join(f"{item.name} {item.dtype} {item.shape}" for item in plan.inputs)
