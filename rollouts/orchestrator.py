"""The orchestrator: one step of every open distribution per tick, all state in the database.

A tick may run twice, on two workers at once, or be killed half-way: each distribution is advanced
under a row lock taken with SKIP LOCKED, every change is a conditional transition, and the next
tick resumes from whatever was committed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from devices.models import Device
from hotswap.observability import tracing
from models_app.models import ModelVersion
from models_app.shipping import status_ships, version_refusal
from rollouts import assignment_states as states
from rollouts import planning
from rollouts.alerts import alert_raise
from rollouts.judges import stage_judge
from rollouts.models import Distribution, RollbackPolicy, Stage
from rollouts.services import (
    assignments_retry,
    distribution_rollback,
    promote,
    stage_failures_over_threshold,
)
from rollouts.transitions import distribution_transition, stage_transition

logger = logging.getLogger(__name__)
D = Distribution.Status
S = Stage.Status
MAX_STEPS = 50


def distributions_due(*, now: datetime) -> list[int]:
    """Open distributions a tick should look at: running, paused (installs still report), scheduled and due."""
    return list(Distribution.objects.filter(status__in=(D.RUNNING, D.PAUSED)).values_list("pk", flat=True)) + list(
        Distribution.objects.filter(status=D.SCHEDULED, scheduled_at__lte=now).values_list("pk", flat=True))


def distribution_advance(*, distribution_id: int, now: datetime | None = None) -> str | None:
    """Takes the distribution as far as it can go now; returns its status, or None if another worker has it."""
    now = now or timezone.now()
    started = tracing.clock()
    outcomes: list[planning.InstallOutcome] | None = [] if tracing.enabled() else None
    with transaction.atomic():
        distribution = (Distribution.objects.select_for_update(skip_locked=True, of=("self",))
                        .select_related("version", "version_b", "winner").filter(pk=distribution_id).first())
        if distribution is None:
            return None
        status_before = distribution.status
        if distribution.status == D.SCHEDULED:
            if distribution.scheduled_at > now:
                return distribution.status
            distribution_transition(distribution=distribution, to=D.RUNNING, now=now, started_at=now,
                                    reason="scheduled start")
        if distribution.status not in (D.RUNNING, D.PAUSED):
            return distribution.status
        if distribution.status == D.RUNNING and (refusal := _unshippable(distribution)):
            # The scrub found the artifact altered: check-ins already withhold it; no stage may offer it further.
            distribution_transition(distribution=distribution, to=D.PAUSED, now=now,
                                    reason=f"{refusal} Roll back or abort this distribution.")
            alert_raise(distribution=distribution, kind="paused", reason=refusal)
        stages = list(distribution.stages.order_by("index"))
        stages_before = [stage.status for stage in stages]
        followed = 0
        for stage in stages:
            stage.distribution = distribution
            if stage.status in (S.INSTALLING, S.SOAKING, S.AWAITING_APPROVAL):
                followed += planning.assignments_follow_reports(stage=stage, now=now, outcomes=outcomes)
        for _ in range(MAX_STEPS):
            if distribution.status != D.RUNNING or not _step(distribution, stages, now):
                break
    if outcomes is not None:  # after the commit: spans describe what was kept
        _trace_device_updates(distribution, stages, outcomes)
        if (followed or distribution.status != status_before
                or [stage.status for stage in stages] != stages_before):
            _trace_step(distribution, stages, status_before=status_before, followed=followed, started=started)
    return distribution.status


def _trace_step(distribution: Distribution, stages: list[Stage], *, status_before: str, followed: int,
                started: int) -> None:
    """A distribution.execute span in the distribution's trace: only for steps that changed something."""
    current = next((stage for stage in stages if stage.status != S.PASSED), None)
    tracing.record("distribution.execute", parent=distribution.traceparent, start_time=started, attributes={
        "distribution.id": distribution.pk, "distribution.strategy": distribution.strategy,
        "model.id": distribution.version.model_id, "distribution.status_before": str(status_before),
        "distribution.status": str(distribution.status), "distribution.reports_followed": followed,
        "stage.index": current.index if current else None, "stage.name": current.name if current else None,
        "stage.status": str(current.status) if current else None,
    })


def _trace_device_updates(distribution: Distribution, stages: list[Stage],
                          outcomes: list[planning.InstallOutcome]) -> None:
    """A device.update span per finished install, from the offer to the report, linked to the agent's model.swap."""
    if not outcomes:
        return
    devices = dict(Device.objects.filter(pk__in={o.device_id for o in outcomes}).values_list("pk", "device_id"))
    versions = dict(ModelVersion.objects.filter(pk__in={o.version_id for o in outcomes})
                    .values_list("pk", "model_id"))
    by_id = {stage.pk: stage for stage in stages}
    for outcome in outcomes:
        ended = _ns(outcome.received_at) or tracing.clock()
        stage = by_id.get(outcome.stage_id)
        failed = outcome.status != "active"
        tracing.record(
            "device.update", parent=distribution.traceparent, start_time=min(_ns(outcome.offered_at) or ended, ended),
            end_time=ended, links=[outcome.traceparent], error=(outcome.error or outcome.status) if failed else "",
            attributes={"device.id": devices.get(outcome.device_id), "model.id": versions.get(outcome.version_id),
                        "distribution.id": distribution.pk, "stage.index": stage.index if stage else None,
                        "install.status": outcome.status, "install.evidence": outcome.evidence,
                        "install.duration_ms": outcome.duration_ms})


def _ns(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1_000_000) * 1000 if moment is not None else None


def _unshippable(distribution: Distribution) -> str | None:
    """Why a version the distribution ships may no longer reach a device (models_app.shipping), or None."""
    for version in (distribution.version, distribution.version_b):
        if version is not None and not status_ships(version.status):
            return version_refusal(version)
    return None


def _step(distribution: Distribution, stages: list[Stage], now: datetime) -> bool:
    """One move of the state machine; True when something changed and another move may follow."""
    current = next((stage for stage in stages if stage.status != S.PASSED), None)
    if current is None:
        distribution_transition(distribution=distribution, to=D.COMPLETED, now=now, finished_at=now,
                                reason="every stage passed")
        distribution.assignments.filter(is_open=True).update(is_open=False, updated_at=now)
        return False
    if current.status == S.PENDING:
        return _stage_start(distribution, stages, current, now)
    if current.status == S.INSTALLING:
        return _stage_installing(distribution, current, now)
    if current.status == S.SOAKING:
        return _stage_soaking(distribution, current, now)
    return False  # awaiting approval (an operator acts), failed or cancelled (the distribution has ended)


def _stage_start(distribution: Distribution, stages: list[Stage], stage: Stage, now: datetime) -> bool:
    previous = stages[stage.index - 1] if stage.index else None
    if previous is not None and previous.finished_at and now < previous.finished_at + timedelta(
            seconds=stage.delay_seconds):
        return False
    sql = planning.target_sql(distribution.target, [v for v in (distribution.version, distribution.version_b) if v])
    joined = planning.joiners_add(distribution=distribution, stage=stage, sql=sql)
    offered = planning.assignments_offer(stage=stage, now=now)
    if joined:
        planning.stage_device_counts(distribution)
        stage.device_count = type(stage).objects.get(pk=stage.pk).device_count
        Distribution.objects.filter(pk=distribution.pk).update(device_count=F("device_count") + joined)
    stage_transition(stage=stage, to=S.INSTALLING, now=now, started_at=now,
                     reason=f"offered to {offered} device(s)" + (f", {joined} joined" if joined else ""))
    return True


def _stage_installing(distribution: Distribution, stage: Stage, now: datetime) -> bool:
    assignments_retry(stage=stage, now=now)
    counts = planning.stage_counts([stage.pk])[stage.pk]
    if failure := stage_failures_over_threshold(stage, counts):
        _halt(distribution, stage, failure, now)
        return False
    if any(counts.get(state) for state in states.UNFINISHED):
        # Devices that already run the new version are judged while the others still install:
        # a regression is acted on without waiting for stragglers.
        verdict = stage_judge()(stage, now=now)
        if verdict is not None and verdict.result == Stage.Verdict.FAIL and not stage.evidence.get("override"):
            _record_verdict(stage, verdict)
            _halt(distribution, stage, f"{stage.name}: {verdict.reason}", now, evidence=verdict.evidence)
        return False
    stage_transition(stage=stage, to=S.SOAKING, now=now, installed_at=now,
                     soak_ends_at=now + timedelta(seconds=stage.soak_seconds),
                     reason=f"installs done: {counts.get(states.A.ACTIVE, 0)} active, "
                            f"{sum(counts.get(state, 0) for state in states.FAILED)} failed")
    return True


def _stage_soaking(distribution: Distribution, stage: Stage, now: datetime) -> bool:
    verdict = stage_judge()(stage, now=now)
    if verdict is None:
        return False
    overridden = stage.evidence.get("override") is not None
    evidence = {**stage.evidence, **verdict.evidence, "reason": verdict.reason}
    if verdict.result == Stage.Verdict.PASS and stage.kind == Stage.Kind.AB_TEST:
        winner = ModelVersion.objects.get(pk=verdict.evidence["winner_id"])
        promote(distribution=distribution, stage=stage, winner=winner, now=now)
        stage_transition(stage=stage, to=S.PASSED, now=now, verdict=verdict.result, evidence=evidence,
                         finished_at=now, reason=f"{verdict.reason}: {winner.model_id} goes to every device")
        return True
    if verdict.result == Stage.Verdict.PASS or overridden:
        to = S.AWAITING_APPROVAL if stage.gate == Stage.Gate.MANUAL else S.PASSED
        stage_transition(stage=stage, to=to, now=now, verdict=verdict.result, evidence=evidence,
                         finished_at=None if to == S.AWAITING_APPROVAL else now,
                         reason=verdict.reason + (" (an operator overrode the halt)" if overridden else ""))
        return to == S.PASSED
    if verdict.result == Stage.Verdict.INCONCLUSIVE and stage.kind == Stage.Kind.AB_TEST:
        stage_transition(stage=stage, to=S.AWAITING_APPROVAL, now=now, verdict=verdict.result, evidence=evidence,
                         reason=verdict.reason)
        alert_raise(distribution=distribution, kind="ab_test_undecided", reason=verdict.reason,
                    evidence=verdict.evidence)
        return False
    _record_verdict(stage, verdict)
    if verdict.result == Stage.Verdict.INCONCLUSIVE:
        reason = f"{stage.name}: inconclusive: {verdict.reason}; an operator decides"
        distribution_transition(distribution=distribution, to=D.PAUSED, now=now, reason=reason)
        alert_raise(distribution=distribution, kind="inconclusive", reason=reason, evidence=verdict.evidence)
        return False
    _halt(distribution, stage, f"{stage.name}: {verdict.reason}", now, evidence=verdict.evidence)
    return False


def _record_verdict(stage: Stage, verdict) -> None:
    evidence = {**stage.evidence, **verdict.evidence, "reason": verdict.reason}
    type(stage).objects.filter(pk=stage.pk).update(verdict=verdict.result, evidence=evidence)
    stage.verdict, stage.evidence = verdict.result, evidence


def _halt(distribution: Distribution, stage: Stage, reason: str, now: datetime, *,
          evidence: dict | None = None) -> None:
    """A failing stage: roll back (automatic policy) or pause for an operator (manual policy)."""
    if distribution.rollback_policy == RollbackPolicy.AUTOMATIC:
        stage_transition(stage=stage, to=S.FAILED, now=now, finished_at=now, reason=reason)
        reverted = distribution_rollback(distribution=distribution, reason=f"automatic rollback: {reason}", now=now)
        alert_raise(distribution=distribution, kind="rolled_back",
                    reason=f"{reason}; {reverted} device(s) sent back to their previous version", evidence=evidence)
    else:
        distribution_transition(distribution=distribution, to=D.PAUSED, now=now,
                                reason=f"{reason}; resume to accept it, or roll back")
        alert_raise(distribution=distribution, kind="paused", reason=reason, evidence=evidence)
