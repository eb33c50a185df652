"""Progressive: rising cumulative percentages (default 10 → 25 → 50 → 100 %), each with a soak and a gate."""

from __future__ import annotations

from rollouts.strategies import Problems, StagePlan, TargetSummary, duration_seconds, gate, iso_duration

DEFAULT_PERCENTAGES = (10, 25, 50, 100)
MAX_STAGES = 20


class Progressive:
    """`stages: [{percent, soak, gate}]`, or the shorthand `percentages` + `soak` + `gate` for every stage."""

    name = "progressive"
    placement = "percent"

    def configure(self, config: dict, *, target: TargetSummary) -> dict:
        problems = Problems()
        problems.unknown_keys(config, {"stages", "percentages", "soak", "gate"})
        if "stages" in config and "percentages" in config:
            problems.add("stages", "Give either stages or percentages, not both.")
        soak = duration_seconds(config, "soak", "PT30M", problems)
        default_gate = gate(config, "gate", problems)
        raw = config.get("stages")
        if raw is None:
            raw = [{"percent": p} for p in config.get("percentages", DEFAULT_PERCENTAGES)] \
                if isinstance(config.get("percentages", DEFAULT_PERCENTAGES), (list, tuple)) else None
        if not isinstance(raw, list) or not raw or len(raw) > MAX_STAGES:
            problems.add("stages", f"Must be a list of 1 to {MAX_STAGES} stages.")
            problems.raise_if_any()
        stages, previous = [], 0.0
        for index, item in enumerate(raw):
            where = f"stages[{index}]"
            if not isinstance(item, dict):
                problems.add(where, "Each stage is an object: {\"percent\", \"soak\", \"gate\"}.")
                continue
            sub = Problems(f"strategy_config.{where}")
            sub.unknown_keys(item, {"percent", "soak", "gate"})
            share = item.get("percent")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 100:
                sub.add("percent", "Must be a number above 0 and at most 100.")
            elif share <= previous:
                sub.add("percent", f"Percentages must rise: {share:g} follows {previous:g}.")
            else:
                previous = float(share)
            stage_soak = duration_seconds(item, "soak", "PT0S", sub) if "soak" in item else soak
            stage_gate = gate(item, "gate", sub, default_gate)
            problems.items += sub.items
            stages.append({"percent": float(share) if isinstance(share, (int, float)) else 0,
                           "soak": iso_duration(stage_soak), "gate": stage_gate})
        if stages and previous != 100:
            problems.add("stages", "The last stage must reach 100 %.")
        problems.raise_if_any()
        return {"stages": stages}

    def plan(self, config: dict, *, target: TargetSummary) -> list[StagePlan]:
        problems = Problems()
        last = len(config["stages"]) - 1
        return [
            StagePlan(kind="rest" if index == last and index else "percentage",
                      name=f"Stage {index + 1}: {stage['percent']:g} %", percent=stage["percent"],
                      soak_seconds=duration_seconds(stage, "soak", "PT0S", problems), gate=stage["gate"])
            for index, stage in enumerate(config["stages"])
        ]


STRATEGY = Progressive()
