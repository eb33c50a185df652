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
    # Measured at the profile's shapes: with guessed shapes the figure is shown but decides nothing.
    shape_dependent: bool = False
    # A p-value in the same source: the gate fails only when the shift is also significant at ALPHA.
    significance: str | None = None


# "Slower than the baseline" needs this much evidence: a one-sided Mann-Whitney U test on the two latency samples.
ALPHA = 0.01


GATES = (
    Gate("max_latency_p99_ms", "metrics", "latency_p99_ms", "max", "p99 latency", "ms",
         "no successful timed inference", shape_dependent=True),
    Gate("min_throughput_ips", "metrics", "throughput_ips", "min", "throughput", "inferences/s",
         "no successful timed inference", shape_dependent=True),
    Gate("max_memory_mb", "metrics", "memory_mb", "max", "memory footprint", "MB", "the model was not loaded"),
    Gate("min_accuracy", "metrics", "accuracy", "min", "accuracy", "%", "no labelled test set was given"),
    Gate("max_error_rate", "metrics", "error_rate", "max", "error rate", "%", "no timed inference ran"),
    Gate("max_latency_increase", "baseline_deltas", "latency_increase", "max",
         "median latency increase against the baseline (measured side by side)", "%",
         "no baseline measured side by side", shape_dependent=True, significance="latency_p_value"),
    Gate("max_accuracy_drop", "baseline_deltas", "accuracy_drop", "max",
         "accuracy drop against the baseline", "pp", "no baseline accuracy to compare with"),
    Gate("min_output_match", "metrics", "output_match", "min", "share of samples within tolerance of the expected "
         "outputs", "%", "no expected outputs in the test set"),
    Gate("min_baseline_agreement", "baseline_deltas", "output_agreement", "min",
         "share of samples whose outputs agree with the baseline's", "%", "no baseline outputs to compare with"),
)  # fmt: skip


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def side_by_side(candidate_ms: list[float], baseline_ms: list[float]) -> dict[str, float | None]:
    """Median and p99 latency change of two interleaved samples, and the p-value of "the candidate is slower"."""
    deltas: dict[str, float | None] = {"latency_increase": None, "latency_p99_increase": None, "latency_p_value": None}
    if len(candidate_ms) < 2 or len(baseline_ms) < 2:
        return deltas
    import numpy as np
    from scipy.stats import mannwhitneyu  # the rollout judge's test (rollouts/health.py), on the child's samples

    deltas["latency_increase"] = float(np.median(candidate_ms) / np.median(baseline_ms) - 1)
    deltas["latency_p99_increase"] = float(np.percentile(candidate_ms, 99) / np.percentile(baseline_ms, 99) - 1)
    deltas["latency_p_value"] = float(mannwhitneyu(candidate_ms, baseline_ms, alternative="greater").pvalue) \
        if len(set(candidate_ms) | set(baseline_ms)) > 1 else 1.0
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


def judge(gate: Gate, threshold: float | None, measured: float | None, *, p_value: float | None = None,
          shapes_guessed: bool = False) -> GateResult:
    if threshold is None:
        return GateResult(gate.name, None, measured, None, "not applicable: the gate is switched off")
    if measured is None:
        return GateResult(gate.name, threshold, None, None, f"not applicable: {gate.missing}")
    shown, limit = _show(measured, gate.unit), _show(threshold, gate.unit)
    if shapes_guessed and gate.shape_dependent:
        return GateResult(gate.name, threshold, measured, None, f"not decisive: shapes guessed ({gate.label} "
                          f"{shown} against {limit} at shapes nobody declared)")
    if gate.bound == "max":
        passed = measured <= threshold
        verdict = f"is within the maximum of {limit}" if passed else f"exceeds the maximum of {limit}"
        if not passed and gate.significance and (p_value is None or p_value >= ALPHA):
            return GateResult(gate.name, threshold, measured, True, f"{gate.label} {shown} exceeds {limit}, but "
                              f"not significantly (p = {_figure(p_value if p_value is not None else 1.0)} >= {ALPHA})")
        if passed is False and gate.significance:
            verdict += f" (p = {p_value:.2g})"
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


def evaluate(thresholds: dict[str, float | None], metrics: dict[str, Any], deltas: dict[str, float | None], *,
             shapes_guessed: bool = False) -> list[GateResult]:
    sources = {"metrics": metrics, "baseline_deltas": deltas}
    return [judge(gate, _number(thresholds.get(gate.name)), _number(sources[gate.source].get(gate.key)),
                  p_value=_number(sources[gate.source].get(gate.significance)) if gate.significance else None,
                  shapes_guessed=shapes_guessed)
            for gate in GATES]
