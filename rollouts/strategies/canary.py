"""Canary: a small stratified share of the fleet first, a soak, then everyone else."""

from __future__ import annotations

from rollouts.strategies import Problems, StagePlan, TargetSummary, duration_seconds, gate, iso_duration, percent


class Canary:
    """A canary stage (default 10 %, soak PT30M), then the rest."""

    name = "canary"
    placement = "percent"

    def configure(self, config: dict, *, target: TargetSummary) -> dict:
        problems = Problems()
        problems.unknown_keys(config, {"percent", "soak", "gate", "final_soak"})
        share = percent(config, "percent", 10, problems)
        if share >= 100:
            problems.add("percent", "A canary is a part of the fleet: use less than 100 (or the direct strategy).")
        soak = duration_seconds(config, "soak", "PT30M", problems)
        final_soak = duration_seconds(config, "final_soak", "PT0S", problems)
        approval = gate(config, "gate", problems)
        problems.raise_if_any()
        return {"percent": share, "soak": iso_duration(soak), "gate": approval, "final_soak": iso_duration(final_soak)}

    def plan(self, config: dict, *, target: TargetSummary) -> list[StagePlan]:
        problems = Problems()
        return [
            StagePlan(kind="canary", name=f"Canary {config['percent']:g} %", percent=config["percent"],
                      soak_seconds=duration_seconds(config, "soak", "PT30M", problems), gate=config["gate"]),
            StagePlan(kind="rest", name="Everyone else", percent=100.0,
                      soak_seconds=duration_seconds(config, "final_soak", "PT0S", problems)),
        ]


STRATEGY = Canary()
