"""The one state machine: every allowed change succeeds and is recorded, every other one is refused."""

import itertools

import pytest
from django.utils import timezone

from rollouts.models import Distribution, Stage, Transition
from rollouts.services import distribution_create
from rollouts.transitions import (
    DISTRIBUTION_TRANSITIONS,
    STAGE_TRANSITIONS,
    TransitionRefused,
    distribution_transition,
    stage_transition,
)

D, S = Distribution.Status, Stage.Status


@pytest.fixture
def distribution(make_fleet, make_version):
    make_fleet({"eu": 3})
    return distribution_create(version=make_version(), strategy="direct")


@pytest.mark.parametrize(("current", "to"), list(itertools.product(D.values, D.values)))
def test_distribution_changes_follow_the_map(distribution, make_user, current, to):
    Distribution.objects.filter(pk=distribution.pk).update(status=current)
    distribution.refresh_from_db()
    operator = make_user(role="Operator")
    if to in DISTRIBUTION_TRANSITIONS[current]:
        distribution_transition(distribution=distribution, to=to, actor=operator, reason="because")
        distribution.refresh_from_db()
        assert distribution.status == to
        last = Transition.objects.filter(distribution=distribution).last()
        assert (last.from_status, last.to_status, last.actor, last.reason) == (current, to, operator, "because")
    else:
        before = Transition.objects.count()
        with pytest.raises(TransitionRefused) as exc:
            distribution_transition(distribution=distribution, to=to, actor=operator)
        assert exc.value.status_code == 409
        distribution.refresh_from_db()
        assert distribution.status == current
        assert Transition.objects.count() == before


@pytest.mark.parametrize(("current", "to"), list(itertools.product(S.values, S.values)))
def test_stage_changes_follow_the_map(distribution, current, to):
    stage = distribution.stages.get()
    Stage.objects.filter(pk=stage.pk).update(status=current)
    stage.refresh_from_db()
    if to in STAGE_TRANSITIONS[current]:
        stage_transition(stage=stage, to=to, now=timezone.now())
        stage.refresh_from_db()
        assert stage.status == to
    else:
        with pytest.raises(TransitionRefused):
            stage_transition(stage=stage, to=to)
        stage.refresh_from_db()
        assert stage.status == current


def test_a_stale_copy_loses_to_the_change_already_made(distribution):
    stale = Distribution.objects.get(pk=distribution.pk)
    distribution_transition(distribution=distribution, to=D.ABORTED)
    with pytest.raises(TransitionRefused, match="changed in the meantime"):
        distribution_transition(distribution=stale, to=D.RUNNING)
    assert Distribution.objects.get(pk=distribution.pk).status == D.ABORTED
