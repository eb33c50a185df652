"""Steps 7 and 8: deltas against a baseline, and the quality gates judged on the measured metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models_app.validation.result import GateResult


@dataclass(frozen=True)
class Gate:
    """How one gate reads its measurement and words its verdict."""

    name: str
    source: str  # "metrics" or "baseline_deltas"
    key: str
    bound: str  # "max" or "min"
    label: str
    unit: str  # "ms", "inferences/s", "MB", "%" (a ratio shown as a percentage) or "pp" (percentage points)
    missing: str  # why the measurement can be absent


GATES = (
    Gate("max_latency_p99_ms", "metrics", "latency_p99_ms", "max", "p99 latency", "ms",
         "no successful timed inference"),
    Gate("min_throughput_ips", "metrics", "throughput_ips", "min", "throughput", "inferences/s",
         "no successful timed inference"),
    Gate("max_memory_mb", "metrics", "memory_mb", "max", "memory footprint", "MB", "the model was not loaded"),
    Gate("min_accuracy", "metrics", "accuracy", "min", "accuracy", "%", "no labelled test set was given"),
    Gate("max_error_rate", "metrics", "error_rate", "max", "error rate", "%", "no timed inference ran"),
    Gate("max_latency_increase", "baseline_deltas", "latency_p99_increase", "max",
         "p99 latency increase against the baseline", "%", "no baseline p99 latency to compare with"),
    Gate("max_accuracy_drop", "baseline_deltas", "accuracy_drop", "max",
         "accuracy drop against the baseline", "pp", "no baseline accuracy to compare with"),
)  # fmt: skip


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def baseline_deltas(metrics: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, float | None]:
    """Relative p99 latency increase and absolute accuracy drop; None where either side is missing."""
    deltas: dict[str, float | None] = {"latency_p99_increase": None, "accuracy_drop": None}
    if not baseline:
        return deltas
    now, before = _number(metrics.get("latency_p99_ms")), _number(baseline.get("latency_p99_ms"))
    if now is not None and before is not None and before > 0:
        deltas["latency_p99_increase"] = (now - before) / before
    now, before = _number(metrics.get("accuracy")), _number(baseline.get("accuracy"))
    if now is not None and before is not None:
        deltas["accuracy_drop"] = before - now
    return deltas


def _figure(value: float) -> str:
    rounded = round(value, 6)
    if rounded.is_integer():
        return f"{rounded:.0f}"
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 100 else f"{value:.2f}" if magnitude >= 1 else f"{value:.3g}"


def _show(value: float, unit: str) -> str:
    if unit == "%":
        return f"{_figure(value * 100)}%"
    if unit == "pp":
        return f"{_figure(value * 100)} pp"
    return f"{_figure(value)} {unit}"


def judge(gate: Gate, threshold: float | None, measured: float | None) -> GateResult:
    if threshold is None:
        return GateResult(gate.name, None, measured, None, "not applicable: the gate is switched off")
    if measured is None:
        return GateResult(gate.name, threshold, None, None, f"not applicable: {gate.missing}")
    shown, limit = _show(measured, gate.unit), _show(threshold, gate.unit)
    if gate.bound == "max":
        passed = measured <= threshold
        verdict = f"is within the maximum of {limit}" if passed else f"exceeds the maximum of {limit}"
    else:
        passed = measured >= threshold
        verdict = f"meets the minimum of {limit}" if passed else f"is below the minimum of {limit}"
    detail = f"{gate.label} {shown} {verdict}"
    if not passed:
        # "By how much": the absolute gap, and for plain units also relative to the threshold.
        gap = abs(measured - threshold)
        detail += f" by {_show(gap, gate.unit)}"
        if gate.unit not in ("%", "pp") and threshold:
            detail += f" ({gap / abs(threshold) * 100:+.0f}%)" if gate.bound == "max" else \
                f" ({-gap / abs(threshold) * 100:+.0f}%)"
    return GateResult(gate.name, threshold, measured, passed, detail)


def evaluate(thresholds: dict[str, float | None], metrics: dict[str, Any],
             deltas: dict[str, float | None]) -> list[GateResult]:
    sources = {"metrics": metrics, "baseline_deltas": deltas}
    return [judge(gate, _number(thresholds.get(gate.name)), _number(sources[gate.source].get(gate.key)))
            for gate in GATES]
