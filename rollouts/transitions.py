"""The rollout state machine: which status changes are allowed, and the one service that makes them."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from hotswap.exceptions import ConflictError
from rollouts.models import Distribution, Stage, Transition

D = Distribution.Status
S = Stage.Status

DISTRIBUTION_TRANSITIONS: dict[str, set[str]] = {
    D.SCHEDULED: {D.RUNNING, D.ABORTED},
    D.RUNNING: {D.PAUSED, D.COMPLETED, D.ABORTED, D.ROLLED_BACK},
    D.PAUSED: {D.RUNNING, D.ABORTED, D.ROLLED_BACK},
    # Rollback stays possible after the end: "manual rollback any time" (an abort keeps what devices installed).
    D.COMPLETED: {D.ROLLED_BACK},
    D.ABORTED: {D.ROLLED_BACK},
    D.ROLLED_BACK: set(),
}

STAGE_TRANSITIONS: dict[str, set[str]] = {
    S.PENDING: {S.INSTALLING, S.CANCELLED},
    S.INSTALLING: {S.SOAKING, S.FAILED, S.CANCELLED},
    S.SOAKING: {S.AWAITING_APPROVAL, S.PASSED, S.FAILED, S.CANCELLED},
    S.AWAITING_APPROVAL: {S.PASSED, S.FAILED, S.CANCELLED},
    S.PASSED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}

# What an operator calls each change, for error messages.
_VERBS = {D.RUNNING: "start or resume", D.PAUSED: "pause", D.COMPLETED: "complete", D.ABORTED: "abort",
          D.ROLLED_BACK: "roll back"}


class TransitionRefused(ConflictError):
    """The current status does not allow this change (or someone else changed it first)."""

    code = "INVALID_TRANSITION"


def distribution_can(distribution: Distribution, to: str) -> bool:
    return to in DISTRIBUTION_TRANSITIONS[distribution.status]


def _actor_label(actor) -> str:
    return actor.get_username() if actor is not None else "orchestrator"


def transition_record(*, distribution_id: int, stage_id: int | None, from_status: str, to_status: str, actor,
                      reason: str, now: datetime) -> None:
    Transition.objects.create(distribution_id=distribution_id, stage_id=stage_id, from_status=from_status,
                              to_status=to_status, actor=actor, actor_label=_actor_label(actor),
                              reason=reason[:1000], at=now)


@transaction.atomic
def distribution_transition(*, distribution: Distribution, to: str, actor=None, reason: str = "",
                            now: datetime | None = None, **fields) -> Distribution:
    """Moves the distribution from its current status to `to`, or raises TransitionRefused.

    The UPDATE is conditional on the status the caller saw: of a double click, two operators or a
    retried task, exactly one wins and the others get a 409.
    """
    now = now or timezone.now()
    current = distribution.status
    if to not in DISTRIBUTION_TRANSITIONS[current]:
        raise TransitionRefused(f"Cannot {_VERBS.get(to, to)} a distribution that is {current.replace('_', ' ')}.",
                                extra={"status": current})
    changed = Distribution.objects.filter(pk=distribution.pk, status=current).update(
        status=to, status_reason=reason[:500], updated_at=now, **fields)
    if changed != 1:
        raise TransitionRefused("The distribution changed in the meantime; reload and try again.")
    transition_record(distribution_id=distribution.pk, stage_id=None, from_status=current, to_status=to, actor=actor,
            reason=reason, now=now)
    distribution.status, distribution.status_reason = to, reason[:500]
    for name, value in fields.items():
        setattr(distribution, name, value)
    return distribution


@transaction.atomic
def stage_transition(*, stage: Stage, to: str, actor=None, reason: str = "", now: datetime | None = None,
                     **fields) -> Stage:
    """Moves a stage from its current status to `to` with the same conditional UPDATE and audit row."""
    now = now or timezone.now()
    current = stage.status
    if to not in STAGE_TRANSITIONS[current]:
        raise TransitionRefused(f"Stage {stage.index + 1} is {current.replace('_', ' ')}; it cannot become "
                                f"{to.replace('_', ' ')}.", extra={"status": current})
    changed = Stage.objects.filter(pk=stage.pk, status=current).update(status=to, **fields)
    if changed != 1:
        raise TransitionRefused("The stage changed in the meantime; reload and try again.")
    transition_record(distribution_id=stage.distribution_id, stage_id=stage.pk, from_status=current, to_status=to,
            actor=actor, reason=reason, now=now)
    stage.status = to
    for name, value in fields.items():
        setattr(stage, name, value)
    return stage
