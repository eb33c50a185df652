"""Operator actions on a distribution are spans of the rollout's own trace, next to the orchestrator's steps."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from opentelemetry.trace import StatusCode
from rest_framework.test import APIClient

from hotswap.observability import tracing
from rollouts.models import Distribution
from rollouts.orchestrator import distribution_advance
from rollouts.services import (
    distribution_abort,
    distribution_approve,
    distribution_create,
    distribution_pause,
    distribution_resume,
    distribution_rollback,
)
from rollouts.transitions import TransitionRefused
from tests.observability.test_tracing import CI_SPAN, CI_TRACE, CI_TRACEPARENT
from tests.rollouts.conftest import offered, report_installs
from tests.spans import is_child, named, one, recording

pytestmark = pytest.mark.django_db


@pytest.fixture
def spans():
    """The server's spans go to an in-memory exporter."""
    with recording(tracing.install) as exporter:
        yield exporter


def advance(distribution: Distribution, now) -> Distribution:
    distribution_advance(distribution_id=distribution.pk, now=now)
    distribution.refresh_from_db()
    return distribution


def test_it_puts_approve_pause_resume_and_rollback_in_the_distributions_trace(spans, make_fleet, make_version,
                                                                              make_user):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 20}, running=old)
    now = timezone.now()
    distribution = distribution_create(version=make_version(version="1.1.0"), strategy="canary",
                                       config={"percent": 10, "soak": "PT0S", "gate": "manual"}, now=now)
    advance(distribution, now)
    report_installs(offered(distribution, 0))
    assert advance(distribution, now + timedelta(seconds=5)).stages.get(index=0).status == "awaiting_approval"
    operator = make_user("Operator", username="olga")

    distribution_approve(distribution=distribution, actor=operator)
    distribution_pause(distribution=distribution, actor=operator, reason="night freeze")
    distribution_resume(distribution=distribution, actor=operator)
    # The rollback through the API, from a CI job with a trace of its own.
    client = APIClient()
    client.force_authenticate(user=operator)
    response = client.post(f"/api/v1/distributions/{distribution.pk}/rollback", {"reason": "p99 too high"},
                           format="json", headers={"traceparent": CI_TRACEPARENT})
    assert response.status_code == 200, response.content
    assert response.json()["reverted_devices"] == 2

    create = one(spans, "distribution.create")
    actions = [one(spans, f"distribution.{name}") for name in ("approve", "pause", "resume", "rollback")]
    approve, pause, resume, rollback = actions
    for action in actions:
        # Children of the rollout's root, as the orchestrator's distribution.execute steps are.
        assert is_child(action, create), action.name
        assert action.status.status_code != StatusCode.ERROR, action.name
        assert action.attributes["distribution.id"] == distribution.pk
        assert action.attributes["distribution.strategy"] == "canary"
        assert action.attributes["model.id"] == "resnet-1.1.0"
        assert action.attributes["actor"] == "olga"
    assert all(is_child(step, create) for step in named(spans, "distribution.execute"))
    assert [a.start_time for a in actions] == sorted(a.start_time for a in actions)

    assert (approve.attributes["stage.index"], approve.attributes["stage.name"]) == (0, "Canary 10 %")
    assert "distribution.winner" not in approve.attributes
    assert (pause.attributes["distribution.status_before"], pause.attributes["distribution.status"]) == (
        "running", "paused")
    assert pause.attributes["action.reason"] == "night freeze"
    assert (resume.attributes["distribution.status_before"], resume.attributes["distribution.status"]) == (
        "paused", "running")
    assert "action.reason" not in resume.attributes
    assert rollback.attributes["distribution.status"] == "rolled_back"
    assert rollback.attributes["distribution.devices_reverted"] == 2
    assert rollback.attributes["action.reason"] == "p99 too high"
    # The rollback links back to the CI job's span that asked for it; the others came from no request.
    assert [(link.context.trace_id, link.context.span_id) for link in rollback.links] == [
        (int(CI_TRACE, 16), int(CI_SPAN, 16))]
    assert not approve.links and not pause.links and not resume.links


def test_a_refused_action_is_an_error_in_the_trace_and_the_orchestrator_is_named_when_no_one_acts(
        spans, make_fleet, make_version, make_user):
    make_fleet({"eu": 10}, running=make_version(version="1.0.0"))
    now = timezone.now()
    distribution = distribution_create(version=make_version(version="1.1.0"), strategy="direct", now=now)
    advance(distribution, now)
    operator = make_user("Operator", username="omar")

    distribution_abort(distribution=distribution, actor=operator)
    with pytest.raises(TransitionRefused):
        distribution_pause(distribution=distribution, actor=operator)  # an aborted distribution cannot pause
    assert distribution_rollback(distribution=distribution) == 10  # as the orchestrator's automatic rollback

    create = one(spans, "distribution.create")
    abort, pause, rollback = (one(spans, f"distribution.{name}") for name in ("abort", "pause", "rollback"))
    assert all(is_child(action, create) for action in (abort, pause, rollback))
    assert abort.attributes["actor"] == "omar" and abort.attributes["distribution.status"] == "aborted"
    assert pause.status.status_code == StatusCode.ERROR
    assert "Cannot pause a distribution that is aborted" in pause.status.description
    assert pause.attributes["distribution.status_before"] == "aborted" and "distribution.status" not in (
        pause.attributes)
    assert rollback.attributes["actor"] == "orchestrator"
    assert rollback.attributes["distribution.devices_reverted"] == 10


def test_without_tracing_the_actions_run_the_same_and_record_nothing(make_fleet, make_version, make_user):
    previous = tracing.install(None)
    try:
        make_fleet({"eu": 5}, running=make_version(version="1.0.0"))
        now = timezone.now()
        distribution = distribution_create(version=make_version(version="1.1.0"), strategy="direct", now=now)
        advance(distribution, now)
        operator = make_user("Operator")
        distribution_pause(distribution=distribution, actor=operator)
        distribution_resume(distribution=distribution, actor=operator)
        assert distribution_rollback(distribution=distribution, actor=operator) == 5
        distribution.refresh_from_db()
        assert distribution.status == "rolled_back"
        assert list(distribution.transitions.filter(stage=None).values_list("to_status", flat=True).order_by("id")) == [
            "scheduled", "running", "paused", "running", "rolled_back"]
    finally:
        tracing.install(previous)
