"""The health judge: the new version's telemetry against the baseline's, in the spirit of Kayenta.

Like is compared with like: a distribution ships one model, the new version's figures are its windows
and the baseline's are windows of that same model's previous version (on devices of the target set not
yet offered it, or on the same devices before the stage); windows of other models the devices run never
enter a verdict, live_metrics or the charts.

Per device, over the stage's window: error rate, p99 latency (inference-weighted over its metric
windows) and accuracy. The new version's devices are compared with the baseline's by a one-sided
Mann-Whitney U test, so a real shift fails the stage while noise does not; absolute limits (error
rate, p99) fail it too. The judge answers on every tick: it fails a stage as soon as the evidence
is there, passes it only when the soak is over, and calls it inconclusive when the soak ended with
too little data, but never before the stage's first windows could have arrived (`telemetry_due`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median

from django.conf import settings
from django.db import connection

from rollouts.judges import Verdict
from rollouts.models import Stage
from rollouts.strategies.ab_test import METRICS

# Baseline for Direct and last stages: the same devices on the previous version, this long before.
BASELINE_LOOKBACK = timedelta(minutes=30)


@dataclass(frozen=True)
class DeviceFigures:
    """One device's figures over a window."""

    inferences: int
    errors: int
    latency_p99_ms: float
    latency_p50_ms: float
    accuracy: float | None
    labelled: int
    versions: tuple[str, ...] = ()  # the model versions (`name-version`) whose windows these figures come from

    @property
    def error_rate(self) -> float:
        return self.errors / self.inferences if self.inferences else 0.0

    def metric(self, name: str) -> float | None:
        return {"latency_p99_ms": self.latency_p99_ms, "latency_p50_ms": self.latency_p50_ms,
                "error_rate": self.error_rate, "accuracy": self.accuracy}[name]


# Per device: sums and inference-weighted latency/accuracy over its windows of one version.
_FIGURES_SQL = """
    SELECT w.device_id, sum(w.inference_count), sum(w.error_count),
           sum(w.latency_p99_ms * w.inference_count) / nullif(sum(w.inference_count), 0),
           sum(w.latency_p50_ms * w.inference_count) / nullif(sum(w.inference_count), 0),
           sum(w.accuracy * w.labelled_count) / nullif(sum(w.labelled_count) FILTER (WHERE w.accuracy IS NOT NULL), 0),
           coalesce(sum(w.labelled_count) FILTER (WHERE w.accuracy IS NOT NULL), 0),
           array_agg(DISTINCT v.model_id)
    FROM devices_metricwindow w
    JOIN rollouts_assignment a ON a.device_id = w.device_id
    JOIN models_app_modelversion v ON v.id = w.version_id
    WHERE a.distribution_id = %(distribution)s AND {assignments}
      AND w.version_id = {version} AND w.window_end > %(since)s AND w.window_end <= %(until)s
    GROUP BY w.device_id
    HAVING sum(w.inference_count) > 0
"""


def _figures(*, distribution_id: int, assignments: str, version: str, since: datetime, until: datetime,
             params: dict) -> list[DeviceFigures]:
    with connection.cursor() as cursor:
        cursor.execute(_FIGURES_SQL.format(assignments=assignments, version=version),
                       {"distribution": distribution_id, "since": since, "until": until, **params})
        return [DeviceFigures(int(n), int(e), float(p99 or 0), float(p50 or 0), acc, int(lab), tuple(versions))
                for _device, n, e, p99, p50, acc, lab, versions in cursor.fetchall()]


def stage_samples(stage: Stage, *, now: datetime) -> tuple[list[DeviceFigures], list[DeviceFigures], str]:
    """(new version's devices, baseline devices, what the baseline is) for a stage's window."""
    since = stage.started_at or now
    new = _figures(distribution_id=stage.distribution_id, assignments="a.stage_id = %(stage)s AND a.state = 'active'",
                   version="a.version_id", since=since, until=now, params={"stage": stage.pk})
    # Devices of the same target set still on their previous version, over the same window.
    baseline = _figures(distribution_id=stage.distribution_id,
                        assignments="a.state = 'pending' AND a.previous_version_id IS NOT NULL",
                        version="a.previous_version_id", since=since, until=now, params={})
    if baseline:
        return new, baseline, "devices of the target set still on their previous version, same window"
    lookback = max(now - since, BASELINE_LOOKBACK)
    baseline = _figures(distribution_id=stage.distribution_id,
                        assignments="a.stage_id = %(stage)s AND a.previous_version_id IS NOT NULL",
                        version="a.previous_version_id", since=since - lookback, until=since,
                        params={"stage": stage.pk})
    return new, baseline, "the same devices on their previous version before the rollout"


def telemetry_due(stage: Stage) -> datetime | None:
    """When the stage's first metric windows can have reached the server: its installs done, one window
    closed on the device, one poll to send it, one flush into the database. A soak shorter than that waits."""
    installed = stage.installed_at or stage.started_at
    if installed is None:
        return None
    return installed + timedelta(seconds=settings.ROLLOUT_TELEMETRY_WINDOW_SECONDS
                                 + settings.DEVICE_POLL_INTERVAL_SECONDS + getattr(settings, "METRIC_FLUSH_SECONDS", 0))


def mann_whitney_greater(first: list[float], second: list[float]) -> float:
    """p-value of "first tends to be greater than second" (one-sided Mann-Whitney U)."""
    from scipy.stats import mannwhitneyu  # the worker imports scipy, web processes never do

    if len(first) < 2 or len(second) < 2 or len(set(first) | set(second)) < 2:
        return 1.0
    return float(mannwhitneyu(first, second, alternative="greater").pvalue)


def _summary(sample: list[DeviceFigures]) -> dict:
    inferences = sum(d.inferences for d in sample)
    labelled = sum(d.labelled for d in sample if d.accuracy is not None)
    return {
        "devices": len(sample),
        "inferences": inferences,
        "error_rate": round(sum(d.errors for d in sample) / inferences, 6) if inferences else None,
        "latency_p99_ms": round(median(d.latency_p99_ms for d in sample), 3) if sample else None,
        "latency_p50_ms": round(median(d.latency_p50_ms for d in sample), 3) if sample else None,
        "accuracy": round(sum(d.accuracy * d.labelled for d in sample if d.accuracy is not None) / labelled, 6)
        if labelled else None,
    }


def _versions(sample: list[DeviceFigures]) -> list[str]:
    """Which versions' windows a sample read: the evidence shows a verdict compared one model with itself."""
    return sorted({version for figures in sample for version in figures.versions})


def _enough(sample: list[DeviceFigures], criteria: dict) -> bool:
    return len(sample) >= criteria["min_devices"] and sum(d.inferences for d in sample) >= criteria["min_inferences"]


def _change(new: float | None, base: float | None) -> float | None:
    return round((new / base - 1) * 100, 2) if new is not None and base else None


def summary_compare(new: list[DeviceFigures], baseline: list[DeviceFigures]) -> dict:
    """Both samples summarised, with the relative changes the criteria speak of."""
    new_sum, base_sum = _summary(new), _summary(baseline)
    accuracy_change = _change(new_sum["accuracy"], base_sum["accuracy"])
    return {"new": new_sum, "baseline": base_sum,
            "latency_increase_pct": _change(new_sum["latency_p99_ms"], base_sum["latency_p99_ms"]),
            "accuracy_drop_pct": -accuracy_change if accuracy_change is not None else None}


def health_judge(stage: Stage, *, now: datetime) -> Verdict | None:
    """The ROLLOUT_JUDGE for telemetry-driven rollouts (see the module docstring)."""
    if stage.kind == Stage.Kind.AB_TEST:
        return ab_judge(stage, now=now)
    criteria = stage.distribution.success_criteria
    alpha = 1 - criteria["confidence"]
    soak_over = stage.soak_ends_at is not None and now >= stage.soak_ends_at
    new, baseline, baseline_is = stage_samples(stage, now=now)
    evidence = {"new": _summary(new), "baseline": _summary(baseline), "baseline_is": baseline_is,
                "versions": {"new": _versions(new), "baseline": _versions(baseline)},
                "judged_at": now.isoformat(), "criteria": criteria}
    if not _enough(new, criteria):
        if not soak_over:
            return None
        if not stage.soak_seconds:
            # No soak was asked for (a canary's last stage by default, an A/B winner going to everyone): the
            # stage is judged the moment its installs are done, before any window could arrive.
            return Verdict(Stage.Verdict.PASS, "installs done; no soak, so no telemetry was waited for", evidence)
        due = telemetry_due(stage)
        if due is not None and now < due:
            return None  # a soak shorter than telemetry takes to arrive waits for the first windows
        evidence["telemetry_due"] = due.isoformat() if due else None
        return Verdict(Stage.Verdict.INCONCLUSIVE,
                       f"too little data: {evidence['new']['devices']} device(s) and {evidence['new']['inferences']} "
                       f"inferences reported (need {criteria['min_devices']} and {criteria['min_inferences']}) "
                       f"by the end of the soak and one window and one poll after the installs", evidence)
    failures = []
    new_sum, base_sum = evidence["new"], evidence["baseline"]
    if new_sum["error_rate"] > criteria["max_error_rate"]:
        failures.append(f"error rate {new_sum['error_rate']:.2%} > {criteria['max_error_rate']:.2%}")
    if criteria["max_latency_p99_ms"] is not None and new_sum["latency_p99_ms"] > criteria["max_latency_p99_ms"]:
        failures.append(f"p99 latency {new_sum['latency_p99_ms']:g} ms > {criteria['max_latency_p99_ms']:g} ms")
    comparable = len(baseline) >= criteria["min_devices"]
    if comparable:
        increase = _change(new_sum["latency_p99_ms"], base_sum["latency_p99_ms"])
        p_latency = mann_whitney_greater([d.latency_p99_ms for d in new], [d.latency_p99_ms for d in baseline])
        evidence["latency_increase_pct"], evidence["latency_p_value"] = increase, round(p_latency, 6)
        if increase is not None and increase > criteria["max_latency_increase"] and p_latency < alpha:
            failures.append(f"p99 latency +{increase:g} % against the baseline (> {criteria['max_latency_increase']:g}"
                            f" %, p = {p_latency:.2g})")
        if new_sum["accuracy"] is not None and base_sum["accuracy"]:
            drop = -_change(new_sum["accuracy"], base_sum["accuracy"])
            p_accuracy = mann_whitney_greater([d.accuracy for d in baseline if d.accuracy is not None],
                                              [d.accuracy for d in new if d.accuracy is not None])
            evidence["accuracy_drop_pct"], evidence["accuracy_p_value"] = drop, round(p_accuracy, 6)
            if drop > criteria["max_accuracy_drop"] and p_accuracy < alpha:
                failures.append(f"accuracy -{drop:g} % against the baseline (> {criteria['max_accuracy_drop']:g} %,"
                                f" p = {p_accuracy:.2g})")
    if failures:
        return Verdict(Stage.Verdict.FAIL, "; ".join(failures), evidence)
    if not soak_over:
        return None
    why = "no significant regression against the baseline" if comparable else "within the absolute limits (no baseline)"
    return Verdict(Stage.Verdict.PASS, why, evidence)


def ab_judge(stage: Stage, *, now: datetime) -> Verdict | None:
    """At the end of the test window: the version that is better on the configured metric by at least the
    minimum improvement, with significance, wins; otherwise inconclusive (an operator decides)."""
    if stage.soak_ends_at is None or now < stage.soak_ends_at:
        return None
    distribution = stage.distribution
    config, criteria = distribution.config, distribution.success_criteria
    since = stage.started_at or now
    samples = {}
    for version_id in (distribution.version_id, distribution.version_b_id):
        samples[version_id] = _figures(
            distribution_id=distribution.pk, assignments="a.stage_id = %(stage)s AND a.state = 'active' "
            "AND a.version_id = %(version)s", version="a.version_id", since=since, until=now,
            params={"stage": stage.pk, "version": version_id})
    metric, higher_is_better = config["metric"], METRICS[config["metric"]]
    a_id, b_id = distribution.version_id, distribution.version_b_id
    evidence = {"metric": metric, "a": _summary(samples[a_id]), "b": _summary(samples[b_id]),
                "versions": {"a": _versions(samples[a_id]), "b": _versions(samples[b_id])},
                "judged_at": now.isoformat()}
    if not (_enough(samples[a_id], criteria) and _enough(samples[b_id], criteria)):
        return Verdict(Stage.Verdict.INCONCLUSIVE, "too little data from one of the groups to pick a winner", evidence)
    values = {vid: [v for d in samples[vid] if (v := d.metric(metric)) is not None] for vid in (a_id, b_id)}
    best = None
    for winner, loser in ((a_id, b_id), (b_id, a_id)):
        better, worse = (values[winner], values[loser]) if higher_is_better else (values[loser], values[winner])
        if not values[winner] or not values[loser]:
            continue
        p_value = mann_whitney_greater(better, worse)
        change = _change(median(values[winner]), median(values[loser]))
        improvement = None if change is None else (change if higher_is_better else -change)
        significant = p_value < 1 - criteria["confidence"]
        if improvement is not None and improvement >= config["min_improvement"] and significant:
            best = (winner, improvement, p_value)
    if best is None:
        return Verdict(Stage.Verdict.INCONCLUSIVE, f"no significant difference in {metric}: an operator decides",
                       evidence)
    winner, improvement, p_value = best
    evidence.update({"winner_id": winner, "improvement_pct": improvement, "p_value": round(p_value, 6)})
    label = "A" if winner == a_id else "B"
    return Verdict(Stage.Verdict.PASS,
                   f"version {label} is better on {metric} by {improvement:g} % (p = {p_value:.2g})", evidence)
