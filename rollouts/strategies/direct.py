"""Direct: every targeted device at once, then a watch period."""

from __future__ import annotations

from rollouts.strategies import Problems, StagePlan, TargetSummary, duration_seconds, iso_duration


class Direct:
    """All targeted devices in one stage."""

    name = "direct"
    placement = "percent"

    def configure(self, config: dict, *, target: TargetSummary) -> dict:
        problems = Problems()
        problems.unknown_keys(config, {"soak"})
        soak = duration_seconds(config, "soak", "PT5M", problems)
        problems.raise_if_any()
        return {"soak": iso_duration(soak)}

    def plan(self, config: dict, *, target: TargetSummary) -> list[StagePlan]:
        soak = duration_seconds(config, "soak", "PT5M", Problems())
        return [StagePlan(kind="all", name="All devices", percent=100.0, soak_seconds=soak)]


STRATEGY = Direct()
