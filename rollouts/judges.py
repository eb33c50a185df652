"""Stage judges: given a soaking stage, say pass, fail, inconclusive, or not yet (None).

The orchestrator asks the judge named by ROLLOUT_JUDGE on every tick while a stage soaks, so a
judge may fail a stage as soon as it has the evidence, without waiting for the soak to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from rollouts.models import Stage


@dataclass(frozen=True)
class Verdict:
    """A judge's answer: result is pass, fail or inconclusive; evidence is stored on the stage."""

    result: str
    reason: str
    evidence: dict = field(default_factory=dict)


class StageJudge(Protocol):
    def __call__(self, stage: Stage, *, now: datetime) -> Verdict | None: ...


def soak_judge(stage: Stage, *, now: datetime) -> Verdict | None:
    """Passes a stage once its soak is over; an A/B test waits for an operator to name the winner."""
    if stage.soak_ends_at is None or now < stage.soak_ends_at:
        return None
    if stage.kind == Stage.Kind.AB_TEST:
        return Verdict(Stage.Verdict.INCONCLUSIVE, "the test window is over: an operator names the winner")
    return Verdict(Stage.Verdict.PASS, f"soaked {stage.soak_seconds} s without a failing verdict")


@lru_cache(maxsize=4)
def _load(path: str) -> StageJudge:
    return import_string(path)


def stage_judge() -> StageJudge:
    return _load(settings.ROLLOUT_JUDGE)
