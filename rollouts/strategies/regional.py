"""Regional: one region after another, with a delay between regions and a soak in each."""

from __future__ import annotations

from rollouts.strategies import Problems, StagePlan, TargetSummary, duration_seconds, gate, iso_duration


class Regional:
    """`regions` in order (default: smallest region first); target regions not listed follow in a last stage."""

    name = "regional"
    placement = "region"

    def configure(self, config: dict, *, target: TargetSummary) -> dict:
        problems = Problems()
        problems.unknown_keys(config, {"regions", "delay", "soak", "gate"})
        regions = config.get("regions")
        if regions is None:
            regions = sorted(target.regions, key=lambda name: (target.regions[name], name))
        if not isinstance(regions, list) or not all(isinstance(r, str) and r for r in regions):
            problems.add("regions", "Must be a list of region names.")
            regions = []
        elif len(set(regions)) != len(regions):
            problems.add("regions", "Each region may appear once.")
        elif missing := [r for r in regions if r not in target.regions]:
            known = ", ".join(sorted(filter(None, target.regions))) or "none"
            problems.add("regions", f"No targeted device is in {', '.join(missing)} (the target set has {known}).")
        delay = duration_seconds(config, "delay", "PT0S", problems)
        soak = duration_seconds(config, "soak", "PT30M", problems)
        approval = gate(config, "gate", problems)
        problems.raise_if_any()
        return {"regions": regions, "delay": iso_duration(delay), "soak": iso_duration(soak), "gate": approval}

    def plan(self, config: dict, *, target: TargetSummary) -> list[StagePlan]:
        problems = Problems()
        delay = duration_seconds(config, "delay", "PT0S", problems)
        soak = duration_seconds(config, "soak", "PT30M", problems)
        stages = [
            StagePlan(kind="region", name=f"Region {region or '(none)'}", region=region, soak_seconds=soak,
                      delay_seconds=delay if index else 0, gate=config["gate"])
            for index, region in enumerate(config["regions"])
        ]
        if set(target.regions) - set(config["regions"]):
            stages.append(StagePlan(kind="rest", name="Other regions", soak_seconds=soak, delay_seconds=delay,
                                    gate=config["gate"]))
        return stages


STRATEGY = Regional()
