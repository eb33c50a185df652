"""Rollout strategies: one module each, one interface (configure, then plan stages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from django.utils.dateparse import parse_duration

from hotswap.exceptions import ApplicationError

MAX_DURATION = timedelta(days=30)


class StrategyConfigError(ApplicationError):
    """The strategy's configuration is invalid; every problem is in details."""

    code = "VALIDATION_ERROR"


@dataclass(frozen=True)
class TargetSummary:
    """What planning needs to know of the target set: its size and its regions."""

    device_count: int
    regions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StagePlan:
    """One planned stage. Devices are placed by cumulative `percent`, by `region`, or all at once."""

    kind: str
    name: str
    percent: float | None = None
    region: str = ""
    soak_seconds: int = 0
    delay_seconds: int = 0
    gate: str = "automatic"


class Strategy(Protocol):
    """Validates and normalises a configuration, then turns it into stages."""

    name: str
    # How devices are placed into stages: "percent" (stratified sample), "region", or "ab" (split A/B).
    placement: str

    def configure(self, config: dict[str, Any], *, target: TargetSummary) -> dict[str, Any]: ...

    def plan(self, config: dict[str, Any], *, target: TargetSummary) -> list[StagePlan]: ...


class Problems:
    """Collects configuration problems so the client sees all of them at once."""

    def __init__(self, prefix: str = "strategy_config") -> None:
        self.prefix = prefix
        self.items: list[dict[str, str]] = []

    def add(self, field_name: str, message: str) -> None:
        self.items.append({"field": f"{self.prefix}.{field_name}" if field_name else self.prefix, "message": message})

    def unknown_keys(self, config: dict, allowed: set[str]) -> None:
        for key in sorted(set(config) - allowed):
            self.add(key, f"Unknown setting; this strategy takes {', '.join(sorted(allowed)) or 'none'}.")

    def raise_if_any(self) -> None:
        if self.items:
            summary = "; ".join(f"{item['field']}: {item['message']}" for item in self.items)
            raise StrategyConfigError(f"The strategy configuration is invalid: {summary}", details=self.items)


def duration_seconds(config: dict, key: str, default: str, problems: Problems) -> int:
    """An ISO 8601 duration such as PT30M, as whole seconds."""
    raw = config.get(key, default)
    parsed = parse_duration(raw) if isinstance(raw, str) and raw.upper().startswith("P") else None
    if parsed is None:
        problems.add(key, f"Use an ISO 8601 duration such as PT30M or PT1H; got {raw!r}.")
        return 0
    if parsed < timedelta(0) or parsed > MAX_DURATION:
        problems.add(key, "Must be between PT0S and P30D.")
        return 0
    return int(parsed.total_seconds())


def iso_duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    return out if out != "PT" else "PT0S"


def percent(config: dict, key: str, default: float, problems: Problems, *, low: float = 0.0) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= 100:
        problems.add(key, f"Must be a number above {low:g} and at most 100.")
        return default
    return float(value)


def gate(config: dict, key: str, problems: Problems, default: str = "automatic") -> str:
    value = config.get(key, default)
    if value not in ("automatic", "manual"):
        problems.add(key, "Must be 'automatic' or 'manual'.")
        return default
    return value


def strategies() -> dict[str, Strategy]:
    from rollouts.strategies import ab_test, canary, direct, progressive, regional

    return {module.STRATEGY.name: module.STRATEGY for module in (direct, canary, progressive, regional, ab_test)}


def strategy_for(name: str) -> Strategy:
    try:
        return strategies()[name]
    except KeyError:
        raise StrategyConfigError(f"Unknown strategy {name!r}; use one of {', '.join(strategies())}.",
                                  details=[{"field": "strategy", "message": "Unknown strategy."}]) from None


def strategy_choose(*, device_count: int, has_version_b: bool) -> tuple[str, str]:
    """The spec's decision tree for a distribution created without a strategy: (strategy, reason)."""
    if has_version_b:
        return "ab_test", "two versions were given, so they are compared in an A/B test"
    if device_count < 10:
        return "direct", f"{device_count} target device(s) (< 10): all at once"
    if device_count <= 100:
        return "canary", f"{device_count} target devices (10-100): a 10 % canary first"
    return "progressive", f"{device_count} target devices (> 100): progressive 10 → 25 → 50 → 100 %"
