"""A/B test: two versions side by side for a test window, then the winner goes to every targeted device."""

from __future__ import annotations

from rollouts.strategies import Problems, StagePlan, TargetSummary, duration_seconds, iso_duration, percent

# Metric name → whether a higher value is better.
METRICS = {"latency_p99_ms": False, "latency_p50_ms": False, "error_rate": False, "accuracy": True}


class ABTest:
    """`split` (share of version A, default 50), `window` (PT1H), `metric`, `min_improvement` (percent)."""

    name = "ab_test"
    placement = "ab"

    def configure(self, config: dict, *, target: TargetSummary) -> dict:
        problems = Problems()
        problems.unknown_keys(config, {"split", "window", "metric", "min_improvement"})
        split = percent(config, "split", 50, problems)
        if split >= 100:
            problems.add("split", "Both versions need devices: use less than 100.")
        window = duration_seconds(config, "window", "PT1H", problems)
        metric = config.get("metric", "latency_p99_ms")
        if metric not in METRICS:
            problems.add("metric", f"Use one of {', '.join(METRICS)}.")
        improvement = config.get("min_improvement", 5)
        if isinstance(improvement, bool) or not isinstance(improvement, (int, float)) or not 0 <= improvement <= 100:
            problems.add("min_improvement", "A percentage between 0 and 100.")
        if target.device_count < 2:
            problems.add("", "An A/B test needs at least two targeted devices.")
        problems.raise_if_any()
        return {"split": split, "window": iso_duration(window), "metric": metric,
                "min_improvement": float(improvement)}

    def plan(self, config: dict, *, target: TargetSummary) -> list[StagePlan]:
        window = duration_seconds(config, "window", "PT1H", Problems())
        return [
            StagePlan(kind="ab_test", name=f"A/B test {config['split']:g} / {100 - config['split']:g}",
                      percent=100.0, soak_seconds=window, gate="manual"),
            StagePlan(kind="rest", name="Winner to everyone", percent=100.0),
        ]


STRATEGY = ABTest()
