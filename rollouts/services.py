"""Distribution services: create, and the operator's actions (approve, pause, resume, abort, roll back)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from devices.services.desired_state import desired_revert
from hotswap.exceptions import ApplicationError, ConflictError
from hotswap.lib.tracing import new_traceparent
from hotswap.observability import tracing
from models_app.models import ModelVersion
from models_app.shipping import version_refusal
from rollouts import assignment_states as states
from rollouts import planning
from rollouts.criteria import criteria_normalise
from rollouts.models import OPEN_STATUSES, Assignment, Distribution, RollbackPolicy, Stage
from rollouts.strategies import TargetSummary, strategy_choose, strategy_for
from rollouts.transitions import TransitionRefused, distribution_transition, stage_transition, transition_record

logger = logging.getLogger(__name__)

# Serialises distribution creation: the overlap check and the concurrency cap are then exact.
_CREATE_LOCK = 0x484F5453  # "HOTS"
D = Distribution.Status
S = Stage.Status
F = TypeVar("F", bound=Callable[..., Any])


class DistributionInProgress(ConflictError):
    """Some targeted devices already belong to an open distribution of the same model."""

    code = "DISTRIBUTION_IN_PROGRESS"


def _check_versions(version: ModelVersion, version_b: ModelVersion | None, *, rollback: bool) -> None:
    details = []
    for field, candidate in (("version", version), ("version_b", version_b)):
        if candidate is not None and (reason := version_refusal(candidate, rollback=rollback)):
            details.append({"field": field, "message": reason})
    if version_b is not None and version_b.pk == version.pk:
        details.append({"field": "version_b", "message": "An A/B test needs two different versions."})
    elif version_b is not None and version_b.ai_model_id != version.ai_model_id:
        # A distribution ships one model: each device's slot of that model gets A or B.
        raise ApplicationError(
            f"An A/B test compares two versions of one model; {version.model_id} and {version_b.model_id} are "
            f"versions of different models. Run one distribution per model.", code="AB_TEST_ACROSS_MODELS",
            details=[{"field": "version_b", "message": f"Must be a version of {version.ai_model.name}."}])
    if details:
        raise ApplicationError(details[0]["message"], code="VERSION_NOT_DISTRIBUTABLE", details=details)


def _stage_rows(distribution: Distribution, plans) -> list[Stage]:
    return Stage.objects.bulk_create([
        Stage(distribution=distribution, index=index, kind=plan.kind, name=plan.name[:100], percent=plan.percent,
              region=plan.region, soak_seconds=plan.soak_seconds, delay_seconds=plan.delay_seconds, gate=plan.gate)
        for index, plan in enumerate(plans)
    ])


@tracing.traced("distribution.create")
@transaction.atomic
def distribution_create(
    *,
    version: ModelVersion,
    version_b: ModelVersion | None = None,
    strategy: str | None = None,
    config: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    success_criteria: dict[str, Any] | None = None,
    rollback_policy: str = RollbackPolicy.AUTOMATIC,
    scheduled_at: datetime | None = None,
    name: str = "",
    install_timeout_seconds: int | None = None,
    max_attempts: int | None = None,
    failure_threshold: float | None = None,
    is_rollback: bool = False,
    actor=None,
    now: datetime | None = None,
) -> Distribution:
    """Resolves the target set, plans the stages and writes every device's assignment, all or nothing.

    A distribution ships one model (the version's) and touches only that model's slot on each device.
    Without a target filter it goes to the devices that run or are assigned the model; installing the
    model on other devices needs a filter (400 INSTALL_NEEDS_TARGET when no device has the model).
    Refused with 400 when a version may not ship or a setting is invalid, with 409 when a targeted
    device already belongs to an open distribution of the same model or too many distributions run.
    The span's context becomes the distribution's traceparent: every device it reaches continues that trace.
    """
    now = now or timezone.now()
    _check_versions(version, version_b, rollback=is_rollback)
    if rollback_policy not in RollbackPolicy.values:
        raise ApplicationError("rollback_policy must be automatic or manual.", code="VALIDATION_ERROR",
                               details=[{"field": "rollback_policy", "message": "Use automatic or manual."}])
    target = planning.target_normalise(target)
    criteria = criteria_normalise(success_criteria)
    sql = planning.target_sql(target, [v for v in (version, version_b) if v is not None])

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CREATE_LOCK])
    regions = planning.target_regions(sql)
    summary = TargetSummary(device_count=sum(regions.values()), regions=regions)
    if summary.device_count == 0 and not planning.target_explicit(target):
        raise ApplicationError(
            f"No device runs or is assigned {version.ai_model.name} yet, and without a target a distribution only "
            f"upgrades those. To install {version.ai_model.name} on devices that do not have it, name them in the "
            "target (device_ids, or a filter such as regions or tags).", code="INSTALL_NEEDS_TARGET",
            details=[{"field": "target", "message": f"Required to install {version.ai_model.name} on new devices."}])
    if summary.device_count == 0:
        raise ApplicationError("No device matches the target filter (or can run this version).",
                               code="NO_TARGET_DEVICES", details=[{"field": "target", "message": "Matches nothing."}])
    if strategy:
        reason = "chosen by the operator"
    else:
        strategy, reason = strategy_choose(device_count=summary.device_count, has_version_b=version_b is not None)
    chosen = strategy_for(strategy)
    if (chosen.name == "ab_test") != (version_b is not None):
        raise ApplicationError("An A/B test takes two versions (version and version_b); other strategies one.",
                               code="VALIDATION_ERROR",
                               details=[{"field": "version_b", "message": "Only for the ab_test strategy."}])
    config = chosen.configure(config or {}, target=summary)

    if conflicts := planning.target_conflicts(sql):
        listed = ", ".join(f"{c['name']} (#{c['distribution']}, {c['devices']} devices)" for c in conflicts)
        raise DistributionInProgress(f"Targeted devices already belong to an open distribution of "
                                     f"{version.ai_model.name}: {listed}.",
                                     details=[{"field": "target", "message": f"#{c['distribution']}: "
                                               f"{c['devices']} device(s)"} for c in conflicts],
                                     extra={"conflicts": conflicts})
    running = Distribution.objects.filter(status__in=OPEN_STATUSES).count()
    if running >= settings.ROLLOUT_MAX_CONCURRENT:
        raise ConflictError(f"{running} distributions are already open (the limit is "
                            f"{settings.ROLLOUT_MAX_CONCURRENT}); wait for one to finish.",
                            code="TOO_MANY_DISTRIBUTIONS")

    distribution = Distribution(
        name=name[:200], ai_model=version.ai_model, version=version, version_b=version_b, strategy=chosen.name,
        strategy_reason=reason[:300],
        config=config, target=target, success_criteria=criteria, rollback_policy=rollback_policy,
        install_timeout_seconds=install_timeout_seconds or settings.ROLLOUT_INSTALL_TIMEOUT_SECONDS,
        max_attempts=max_attempts or settings.ROLLOUT_MAX_ATTEMPTS,
        failure_threshold=settings.ROLLOUT_FAILURE_THRESHOLD if failure_threshold is None else failure_threshold,
        is_rollback=is_rollback, scheduled_at=scheduled_at or now, created_by=actor,
        traceparent=tracing.traceparent() or new_traceparent(),
    )
    distribution.full_clean()
    distribution.save()
    stages = _stage_rows(distribution, chosen.plan(config, target=summary))
    try:
        with transaction.atomic():
            written = planning.assignments_plan(distribution=distribution, stages=stages,
                                                placement=chosen.placement, sql=sql, count=summary.device_count)
    except IntegrityError:
        # Only if a device changed hands between the checks and the insert (the lock makes it rare).
        raise DistributionInProgress("Targeted devices joined another distribution meanwhile; try again.") from None
    planning.stage_device_counts(distribution)
    Distribution.objects.filter(pk=distribution.pk).update(device_count=written)
    distribution.device_count = written
    transition_record(distribution_id=distribution.pk, stage_id=None, from_status="", to_status=D.SCHEDULED,
                      actor=actor, reason=f"created: {chosen.name} ({reason}), {written} devices", now=now)
    logger.info("distribution created", extra={"distribution": distribution.pk, "strategy": chosen.name,
                                               "devices": written})
    for shipped in (version, version_b):
        if shipped is not None:
            tracing.link(shipped.traceparent)
    tracing.annotate(**{"distribution.id": distribution.pk, "distribution.strategy": chosen.name,
                        "distribution.devices": written, "distribution.rollback": is_rollback,
                        "model.id": version.model_id, "model.version_b": version_b.model_id if version_b else None})
    _advance_soon(distribution.pk)
    return distribution


def _advance_soon(distribution_id: int) -> None:
    from rollouts.tasks import distribution_advance

    transaction.on_commit(tracing.bind(lambda: distribution_advance.delay(distribution_id)))


def _traced_action(name: str) -> Callable[[F], F]:
    """Runs an action on a distribution in a span of the distribution's own trace, beside the orchestrator's steps.

    The parent is Distribution.traceparent, as for distribution.execute, so the rollout's trace shows who
    approved, paused or rolled back and when; the span links to the request (or span) that asked for it.
    A refused action ends the span with an error.
    """
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not tracing.enabled():
                return function(*args, **kwargs)
            distribution, actor = kwargs["distribution"], kwargs.get("actor")
            with tracing.span(name, parent=distribution.traceparent, links=[tracing.origin()], attributes={
                "distribution.id": distribution.pk, "distribution.strategy": distribution.strategy,
                "model.id": distribution.version.model_id, "distribution.status_before": str(distribution.status),
                "actor": actor.get_username() if actor is not None else "orchestrator",
                "action.reason": kwargs.get("reason") or None,
            }):
                result = function(*args, **kwargs)
                tracing.annotate(**{"distribution.status": str(distribution.status)})
                return result
        return wrapper  # type: ignore[return-value]
    return decorate


def stage_current(distribution: Distribution) -> Stage | None:
    """The first stage that has not passed (None once every stage passed)."""
    return distribution.stages.exclude(status=S.PASSED).order_by("index").first()


@_traced_action("distribution.approve")
@transaction.atomic
def distribution_approve(*, distribution: Distribution, actor, winner: ModelVersion | None = None,
                         now: datetime | None = None) -> Stage:
    """Opens the manual gate the distribution waits at; for an A/B test, names the winner to promote."""
    now = now or timezone.now()
    if distribution.status not in (D.RUNNING, D.PAUSED):
        raise TransitionRefused(f"A distribution that is {distribution.status} has no gate to approve.")
    stage = stage_current(distribution)
    if stage is None or stage.status != S.AWAITING_APPROVAL:
        where = f"stage {stage.index + 1} is {stage.get_status_display().lower()}" if stage else "no stage is left"
        raise TransitionRefused(f"Nothing waits for approval: {where}.")
    if stage.kind == Stage.Kind.AB_TEST:
        if winner is None or winner.pk not in (distribution.version_id, distribution.version_b_id):
            raise ApplicationError("Name the winner of the A/B test: one of the two versions tested.",
                                   code="VALIDATION_ERROR", details=[{"field": "winner", "message": "Required."}])
        promote(distribution=distribution, stage=stage, winner=winner, now=now)
    elif winner is not None:
        # Otherwise the audit trail would name a winner that nothing was promoted for.
        raise ApplicationError(f"{stage.name} is not an A/B test: there is no winner to name.",
                               code="VALIDATION_ERROR", details=[{"field": "winner", "message": "Only for an A/B "
                                                                  "test."}])
    tracing.annotate(**{"stage.index": stage.index, "stage.name": stage.name,
                        "distribution.winner": winner.model_id if winner else None})
    stage_transition(stage=stage, to=S.PASSED, actor=actor, now=now, finished_at=now, approved_by=actor,
                     reason=f"approved{f', winner {winner.model_id}' if winner else ''}")
    Distribution.objects.filter(pk=distribution.pk).update(approved_by=actor)
    _advance_soon(distribution.pk)
    return stage


def promote(*, distribution: Distribution, stage: Stage, winner: ModelVersion, now: datetime) -> None:
    """The A/B loser's devices get assignments of the winner in the next stage (the old ones are superseded)."""
    promote = distribution.stages.get(index=stage.index + 1)
    with connection.cursor() as cursor:
        cursor.execute("""
            WITH losers AS (
                UPDATE rollouts_assignment SET state = %(superseded)s, is_open = false, updated_at = %(now)s
                WHERE stage_id = %(stage)s AND version_id <> %(winner)s AND is_open
                RETURNING device_id, previous_version_id
            )
            INSERT INTO rollouts_assignment (distribution_id, stage_id, device_id, ai_model_id, version_id,
                                             previous_version_id, state, is_open, attempts, last_error)
            SELECT %(distribution)s, %(promote)s, device_id, %(model)s, %(winner)s, previous_version_id, %(pending)s,
                   true, 0, ''
            FROM losers
        """, {"now": now, "stage": stage.pk, "winner": winner.pk, "distribution": distribution.pk,
              "promote": promote.pk, "model": distribution.ai_model_id, "pending": states.A.PENDING,
              "superseded": states.A.SUPERSEDED})
    Distribution.objects.filter(pk=distribution.pk).update(winner=winner)
    distribution.winner = winner
    planning.stage_device_counts(distribution)


@_traced_action("distribution.pause")
def distribution_pause(*, distribution: Distribution, actor=None, reason: str = "",
                       now: datetime | None = None) -> Distribution:
    """Stops offering new stages; devices already offered go on installing."""
    return distribution_transition(distribution=distribution, to=D.PAUSED, actor=actor, now=now,
                                   reason=reason or "paused by an operator")


@_traced_action("distribution.resume")
@transaction.atomic
def distribution_resume(*, distribution: Distribution, actor, reason: str = "",
                        now: datetime | None = None) -> Distribution:
    """Continues a paused distribution; a halt the operator resumes from is accepted (not raised again)."""
    now = now or timezone.now()
    stage = stage_current(distribution)
    # Only the orchestrator's own pause is a halt to accept; an operator's pause leaves the judge in charge.
    paused_by = (distribution.transitions.filter(stage=None, to_status=D.PAUSED).order_by("-at", "-id")
                 .values_list("actor_id", flat=True).first())
    halt = distribution.status_reason if distribution.status == D.PAUSED and paused_by is None else None
    distribution_transition(distribution=distribution, to=D.RUNNING, actor=actor, now=now,
                            reason=reason or "resumed by an operator")
    if halt is not None and stage is not None and stage.status in (S.INSTALLING, S.SOAKING):
        evidence = {**stage.evidence, "override": {"by": actor.get_username() if actor else "orchestrator",
                                                   "at": now.isoformat(), "reason": halt}}
        Stage.objects.filter(pk=stage.pk).update(evidence=evidence)
    _advance_soon(distribution.pk)
    return distribution


def _close(distribution: Distribution, *, now: datetime, stage_to: str, pending_to: str, actor, reason: str) -> None:
    Assignment.objects.filter(distribution=distribution, state=Assignment.State.PENDING).update(
        state=pending_to, is_open=False, updated_at=now)
    Assignment.objects.filter(distribution=distribution, is_open=True).update(is_open=False, updated_at=now)
    for stage in distribution.stages.exclude(status__in=(S.PASSED, S.FAILED, S.CANCELLED)):
        stage_transition(stage=stage, to=stage_to, actor=actor, reason=reason, now=now, finished_at=now)


@_traced_action("distribution.abort")
@transaction.atomic
def distribution_abort(*, distribution: Distribution, actor=None, reason: str = "",
                       now: datetime | None = None) -> Distribution:
    """Stops for good: nothing more is offered; devices keep what they installed (roll back to undo that)."""
    now = now or timezone.now()
    reason = reason or "aborted by an operator"
    distribution_transition(distribution=distribution, to=D.ABORTED, actor=actor, now=now, reason=reason,
                            finished_at=now)
    _close(distribution, now=now, stage_to=S.CANCELLED, pending_to=Assignment.State.CANCELLED, actor=actor,
           reason=reason)
    return distribution


# Per device, the latest assignment whose version was offered: what its slot was set to, and what it had before.
_TOUCHED_SQL = """
    SELECT DISTINCT ON (a.device_id) a.device_id, a.previous_version_id, a.sequence
    FROM rollouts_assignment a
    WHERE a.distribution_id = %s AND a.sequence IS NOT NULL AND a.state = ANY(%s)
    ORDER BY a.device_id, a.id DESC
"""


@_traced_action("distribution.rollback")
@transaction.atomic
def distribution_rollback(*, distribution: Distribution, actor=None, reason: str = "",
                          now: datetime | None = None) -> int:
    """Every device this distribution touched goes back to the version of the model it had before (a device
    that did not have the model is asked to remove it); returns how many. Other models stay as they are.

    Only slots whose desired state is still the one this distribution set are changed: a device a
    later distribution or an operator moved on is left alone.
    """
    now = now or timezone.now()
    reason = reason or "rolled back by an operator"
    distribution_transition(distribution=distribution, to=D.ROLLED_BACK, actor=actor, now=now, reason=reason,
                            finished_at=now)
    with connection.cursor() as cursor:
        cursor.execute(_TOUCHED_SQL, [distribution.pk, list(states.OFFERED_ONCE)])
        touched = cursor.fetchall()
    reverted = desired_revert(
        ai_model_id=distribution.ai_model_id, device_ids=[row[0] for row in touched],
        version_ids=[row[1] for row in touched], expected_sequences=[row[2] for row in touched],
        source=f"rollback:{distribution.pk}", reason=reason, now=now, actor=actor,
        traceparent=distribution.traceparent)
    Assignment.objects.filter(distribution=distribution, sequence__isnull=False, state__in=states.OFFERED_ONCE).update(
        state=Assignment.State.ROLLED_BACK, is_open=False, updated_at=now)  # closed in the same write
    _close(distribution, now=now, stage_to=S.CANCELLED, pending_to=Assignment.State.CANCELLED, actor=actor,
           reason=reason)
    tracing.annotate(**{"distribution.devices_reverted": reverted})
    logger.warning("distribution rolled back", extra={"distribution": distribution.pk, "devices": reverted,
                                                      "reason": reason})
    return reverted


def model_version_rollback(*, version: ModelVersion, actor=None, now: datetime | None = None) -> Distribution:
    """A Direct distribution that restores `version` on every device whose slot of its model runs, or is
    assigned, a later version (semver precedence); other models on those devices stay as they are."""
    later = list(ModelVersion.objects.filter(ai_model_id=version.ai_model_id, precedence__gt=version.precedence)
                 .values_list("model_id", flat=True))
    if not later:
        raise ApplicationError(f"No version of {version.ai_model.name} later than {version.version} exists.",
                               code="NOTHING_TO_ROLL_BACK")
    return distribution_create(
        version=version, strategy="direct", config={"soak": "PT0S"}, target={"versions": later},
        rollback_policy=RollbackPolicy.MANUAL, is_rollback=True, name=f"Roll back to {version.model_id}",
        actor=actor, now=now,
    )


def assignments_retry(*, stage: Stage, now: datetime) -> tuple[int, int]:
    """Failed installs with attempts left, and silent ones past the timeout, are offered again.

    Returns (offered again, timed out).
    """
    distribution = stage.distribution
    deadline = now - timedelta(seconds=distribution.install_timeout_seconds)
    retried = planning.assignments_offer(
        stage=stage, now=now, reason=f"{distribution} · {stage.name} (retry)",
        condition="a.attempts < %(max)s AND (a.state = %(failed)s OR (a.state = ANY(%(in_flight)s) "
                  "AND a.offered_at < %(deadline)s))",
        params={"max": distribution.max_attempts, "deadline": deadline, "failed": Assignment.State.FAILED,
                "in_flight": list(states.IN_FLIGHT)})
    timed_out = Assignment.objects.filter(
        stage=stage, state__in=states.IN_FLIGHT, offered_at__lt=deadline,
        attempts__gte=distribution.max_attempts,
    ).update(state=Assignment.State.TIMED_OUT, updated_at=now, finished_at=now,
             last_error=f"no install outcome within {distribution.install_timeout_seconds} s")
    return retried, timed_out


def stage_failures_over_threshold(stage: Stage, counts: dict[str, int]) -> str | None:
    """Why the stage must halt on failed installs (failed for good + timed out), or None."""
    failed = sum(counts.get(state, 0) for state in states.FAILED)
    accepted = stage.evidence.get("override") is not None
    size = sum(n for state, n in counts.items() if state not in states.NOT_COUNTED)
    threshold = stage.distribution.failure_threshold
    if accepted or not size or failed <= threshold * size:
        return None
    return (f"{failed} of {size} installs in {stage.name} failed or timed out "
            f"({failed / size:.0%} > the {threshold:.0%} threshold)")
