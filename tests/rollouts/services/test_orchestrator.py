"""The orchestrator end to end on the database: stages, installs, gates, halts and the operator's actions."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from devices.models import ModelSlot
from devices.services.desired_state import desired_state_set
from hotswap.exceptions import ApplicationError
from models_app.models import ModelVersion
from models_app.shipping import model_version_status_change
from rollouts.judges import Verdict
from rollouts.models import Assignment, Distribution, Stage, Transition
from rollouts.orchestrator import distribution_advance
from rollouts.services import (
    distribution_abort,
    distribution_approve,
    distribution_create,
    distribution_pause,
    distribution_resume,
    distribution_rollback,
    model_version_rollback,
)
from rollouts.transitions import TransitionRefused
from tests.rollouts.conftest import offered, report_installs, slots_run


@pytest.fixture(autouse=True)
def _soak_judge():
    # The mechanics of stages, gates and halts; the health judge has its own tests.
    with override_settings(ROLLOUT_JUDGE="rollouts.judges.soak_judge"):
        yield


def canary_of_a_new_version(make_fleet, make_version, now):
    """A canary (10 %, 10 min soak) of 1.1.0 to 50 devices running 1.0.0: (distribution, new version)."""
    old = make_version(version="1.0.0")
    new = make_version(version="1.1.0")
    make_fleet({"eu": 30, "us": 20}, running=old)
    return distribution_create(version=new, strategy="canary", config={"percent": 10, "soak": "PT10M"}, now=now), new


def test_it_runs_a_canary_to_completion(make_fleet, make_version, django_capture_on_commit_callbacks):
    now = timezone.now()
    distribution, new = canary_of_a_new_version(make_fleet, make_version, now)
    stages = list(distribution.stages.all())
    assert [s.device_count for s in stages] == [5, 45]
    distribution_advance(distribution_id=distribution.pk, now=now)
    canary = offered(distribution, 0)
    assert len(canary) == 5
    assert ModelSlot.objects.filter(version=new).count() == 5
    report_installs(canary)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=5))
    assert Stage.objects.get(pk=stages[0].pk).status == "soaking"
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=11))
    rest = offered(distribution, 1)
    assert len(rest) == 45
    report_installs(rest)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=12))
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.COMPLETED
    assert ModelSlot.objects.filter(version=new).count() == 50


def test_status_counts_what_devices_did(make_fleet, make_version):
    from rollouts.selectors import distribution_status

    new = make_version(version="2.0.0")
    make_fleet({"eu": 10})
    now = timezone.now()
    distribution = distribution_create(version=new, strategy="direct", now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    devices = offered(distribution)
    report_installs(devices[:7])
    report_installs(devices[7:8], "failed", error="checksum mismatch")
    distribution_advance(distribution_id=distribution.pk, now=now)
    distribution.refresh_from_db()
    status = distribution_status(distribution=distribution, now=now)
    assert status["progress"]["active"] == 7
    assert status["stages"][0]["progress"]["targeted"] == 10
    assert "installs on" in status["waiting_for"]


def _advance(distribution, now):
    distribution_advance(distribution_id=distribution.pk, now=now)
    distribution.refresh_from_db()
    return distribution


def _stage(distribution, index):
    return distribution.stages.get(index=index)


def test_a_scheduled_distribution_waits_for_its_start(make_fleet, make_version):
    make_fleet({"eu": 5})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), scheduled_at=now + timedelta(hours=1), now=now)
    assert _advance(distribution, now).status == "scheduled"
    assert not ModelSlot.objects.filter(version=distribution.version).exists()
    assert _advance(distribution, now + timedelta(hours=1)).status == "running"
    assert len(offered(distribution)) == 5


def test_running_a_tick_twice_changes_nothing_more(make_fleet, make_version):
    make_fleet({"eu": 20})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), strategy="canary", now=now)
    _advance(distribution, now)
    sequences = sorted(ModelSlot.objects.values_list("device_id", "sequence"))
    transitions = Transition.objects.count()
    _advance(distribution, now)
    _advance(distribution, now + timedelta(seconds=1))
    assert sorted(ModelSlot.objects.values_list("device_id", "sequence")) == sequences
    assert Transition.objects.count() == transitions


def test_silent_devices_are_offered_again_then_time_out(make_fleet, make_version):
    make_fleet({"eu": 4})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), install_timeout_seconds=60, max_attempts=2,
                                       failure_threshold=0.5, rollback_policy="manual", now=now)
    _advance(distribution, now)
    first = {a.device_id: a.sequence for a in offered(distribution)}
    report_installs(offered(distribution)[:3])
    _advance(distribution, now + timedelta(seconds=61))
    retried = Assignment.objects.get(distribution=distribution, state="offered")
    assert retried.attempts == 2
    assert retried.sequence > first[retried.device_id]  # the device sees a new manifest and tries again
    _advance(distribution, now + timedelta(seconds=125))
    retried.refresh_from_db()
    assert retried.state == "timed_out"
    assert "no install outcome" in retried.last_error
    # 1 of 4 timed out: under the 50 % threshold, so the stage goes on to its soak.
    assert _stage(distribution, 0).status == "soaking"


def test_failed_installs_are_retried_before_they_count(make_fleet, make_version):
    make_fleet({"eu": 2})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), max_attempts=3, now=now)
    _advance(distribution, now)
    report_installs(offered(distribution), "failed", error="sha256 mismatch")
    _advance(distribution, now + timedelta(seconds=5))
    assert {a.attempts for a in offered(distribution)} == {2}
    assert distribution.status == "running"


def test_too_many_failures_roll_back_with_the_automatic_policy(make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 10}, running=old)
    now = timezone.now()
    distribution = distribution_create(version=make_version(version="1.1.0"), strategy="direct", max_attempts=1,
                                       now=now)
    _advance(distribution, now)
    devices = offered(distribution)
    report_installs(devices[:8])
    report_installs(devices[8:], "failed", error="onnxruntime: invalid model")
    _advance(distribution, now + timedelta(seconds=5))
    assert distribution.status == "rolled_back"
    assert "2 of 10 installs" in distribution.status_reason
    assert _stage(distribution, 0).status == "failed"
    assert set(ModelSlot.objects.values_list("version_id", "rollback")) == {(old.pk, True)}
    assert not Assignment.objects.filter(distribution=distribution, is_open=True).exists()


def test_too_many_failures_pause_with_the_manual_policy_and_resume_accepts_them(make_fleet, make_version, make_user):
    make_fleet({"eu": 10})
    now = timezone.now()
    new = make_version(version="1.1.0")
    distribution = distribution_create(version=new, strategy="direct", max_attempts=1, rollback_policy="manual",
                                       config={"soak": "PT0S"}, now=now)
    _advance(distribution, now)
    devices = offered(distribution)
    report_installs(devices[:7])
    report_installs(devices[7:], "failed", error="out of memory")
    assert _advance(distribution, now + timedelta(seconds=5)).status == "paused"
    assert "resume to accept" in distribution.status_reason
    assert ModelSlot.objects.filter(version=new).count() == 10  # nothing rolled back
    distribution_resume(distribution=distribution, actor=make_user(role="Operator"))
    assert _advance(distribution, now + timedelta(seconds=10)).status == "completed"


def test_a_manual_gate_waits_for_approval(make_fleet, make_version, make_user):
    make_fleet({"eu": 20})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), strategy="canary",
                                       config={"soak": "PT0S", "gate": "manual"}, now=now)
    _advance(distribution, now)
    report_installs(offered(distribution, 0))
    _advance(distribution, now + timedelta(seconds=5))
    assert _stage(distribution, 0).status == "awaiting_approval"
    assert offered(distribution, 1) == []
    operator = make_user(role="Operator")
    distribution_approve(distribution=distribution, actor=operator)
    assert _stage(distribution, 0).approved_by == operator
    _advance(distribution, now + timedelta(seconds=6))
    assert len(offered(distribution, 1)) == 18
    with pytest.raises(TransitionRefused):
        distribution_approve(distribution=distribution, actor=operator)


@pytest.mark.django_db(transaction=True)
def test_two_approvals_racing_make_exactly_one_transition(make_fleet, make_version, make_user):
    make_fleet({"eu": 20})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), strategy="canary",
                                       config={"soak": "PT0S", "gate": "manual"}, now=now)
    _advance(distribution, now)
    report_installs(offered(distribution, 0))
    _advance(distribution, now + timedelta(seconds=5))
    operators = [make_user(role="Operator"), make_user(role="Operator")]
    barrier, outcomes = threading.Barrier(2), []

    def approve(operator):
        try:
            barrier.wait()
            distribution_approve(distribution=Distribution.objects.get(pk=distribution.pk), actor=operator)
            outcomes.append("approved")
        except TransitionRefused:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(op,)) for op in operators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["approved", "refused"]
    assert Transition.objects.filter(stage__index=0, to_status="passed").count() == 1


def test_pause_stops_new_stages_and_resume_goes_on(make_fleet, make_version, make_user):
    make_fleet({"eu": 20})
    now = timezone.now()
    distribution = distribution_create(version=make_version(), strategy="canary", config={"soak": "PT0S"}, now=now)
    _advance(distribution, now)
    operator = make_user(role="Operator")
    distribution_pause(distribution=distribution, actor=operator, reason="night freeze")
    report_installs(offered(distribution, 0))
    _advance(distribution, now + timedelta(seconds=5))
    assert distribution.status == "paused"
    # Installs still count while paused; no new stage is offered.
    assert Assignment.objects.filter(distribution=distribution, state="active").count() == 2
    assert offered(distribution, 1) == []
    with pytest.raises(TransitionRefused):
        distribution_pause(distribution=distribution, actor=operator)
    distribution_resume(distribution=distribution, actor=operator)
    _advance(distribution, now + timedelta(seconds=6))
    assert len(offered(distribution, 1)) == 18


def test_abort_stops_for_good_and_frees_the_devices(make_fleet, make_version, make_user):
    make_fleet({"eu": 20})
    now = timezone.now()
    new = make_version(version="1.1.0")
    distribution = distribution_create(version=new, strategy="canary", now=now)
    _advance(distribution, now)
    distribution_abort(distribution=distribution, actor=make_user(role="Operator"))
    distribution.refresh_from_db()
    assert distribution.status == "aborted"
    assert Assignment.objects.filter(distribution=distribution, state="cancelled").count() == 18
    assert ModelSlot.objects.filter(version=new).count() == 2  # the canary keeps what it got
    assert set(distribution.stages.values_list("status", flat=True)) == {"cancelled"}
    # The devices are free for the next distribution.
    assert distribution_create(version=make_version(version="1.2.0")).device_count == 20


def test_rollback_restores_previous_versions_but_not_devices_moved_on_since(make_fleet, make_version, make_user):
    old = make_version(version="1.0.0")
    devices = make_fleet({"eu": 10}, running=old)
    now = timezone.now()
    new = make_version(version="1.1.0")
    distribution = distribution_create(version=new, strategy="direct", config={"soak": "PT0S"}, now=now)
    _advance(distribution, now)
    report_installs(offered(distribution))
    assert _advance(distribution, now).status == "completed"  # the devices are free again
    other = make_version(version="1.2.0")
    desired_state_set(devices=[devices[0]], version=other, reason="hotfix for one device")
    reverted = distribution_rollback(distribution=distribution, actor=make_user(role="Operator"))
    assert reverted == 9
    assert ModelSlot.objects.get(device=devices[0]).version == other
    assert set(ModelSlot.objects.exclude(device=devices[0]).values_list("version_id", "rollback")) == {
        (old.pk, True)}
    assert Assignment.objects.filter(distribution=distribution, state="rolled_back").count() == 10


def test_a_completed_distribution_can_still_be_rolled_back(make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 3}, running=old)
    now = timezone.now()
    distribution = distribution_create(version=make_version(version="1.1.0"), config={"soak": "PT0S"}, now=now)
    _advance(distribution, now)
    report_installs(offered(distribution))
    assert _advance(distribution, now).status == "completed"
    assert distribution_rollback(distribution=distribution) == 3
    distribution.refresh_from_db()
    assert distribution.status == "rolled_back"
    with pytest.raises(TransitionRefused):
        distribution_rollback(distribution=distribution)


def test_devices_that_start_matching_join_the_next_stage(make_fleet, make_version, make_device):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 20}, running=old)
    now = timezone.now()
    distribution = distribution_create(version=make_version(version="1.1.0"), strategy="canary",
                                       config={"soak": "PT0S"}, now=now)
    _advance(distribution, now)
    late = make_device(device_id="late-joiner", region="eu", memory_mb=4096)
    slots_run([late], old)  # it now runs the model the distribution upgrades
    without = make_device(device_id="other-model-only", region="eu", memory_mb=4096)
    slots_run([without], make_version("magika", "1.0.0"))
    report_installs(offered(distribution, 0))
    _advance(distribution, now + timedelta(seconds=5))
    joined = Assignment.objects.get(distribution=distribution, device=late)
    assert (joined.stage.index, joined.state, joined.previous_version) == (1, "offered", old)
    assert _stage(distribution, 1).device_count == 19
    # Without a target the distribution upgrades devices that have resnet: a device without it never joins.
    assert not Assignment.objects.filter(device=without).exists()
    assert not without.slots.filter(ai_model=old.ai_model).exists()


def test_an_ab_test_waits_for_a_winner_then_gives_it_to_everyone(make_fleet, make_version, make_user):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 10}, running=old)
    a, b = make_version(version="1.1.0"), make_version(version="1.2.0")
    now = timezone.now()
    distribution = distribution_create(version=a, version_b=b, config={"window": "PT1M"}, now=now)
    _advance(distribution, now)
    report_installs(offered(distribution, 0))
    _advance(distribution, now + timedelta(seconds=5))
    assert _stage(distribution, 0).status == "soaking"
    _advance(distribution, now + timedelta(minutes=2))
    assert _stage(distribution, 0).status == "awaiting_approval"
    operator = make_user(role="Operator")
    with pytest.raises(ApplicationError):
        distribution_approve(distribution=distribution, actor=operator)
    distribution_approve(distribution=distribution, actor=operator, winner=b)
    _advance(distribution, now + timedelta(minutes=3))
    promoted = offered(distribution, 1)
    assert len(promoted) == 5 and {x.version_id for x in promoted} == {b.pk}
    assert {x.previous_version_id for x in promoted} == {old.pk}
    report_installs(promoted)
    assert _advance(distribution, now + timedelta(minutes=4)).status == "completed"
    assert distribution.winner == b
    assert set(ModelSlot.objects.values_list("version_id", flat=True)) == {b.pk}


def _failing_judge(stage, *, now):
    return Verdict("fail", "p99 latency +48 % against the baseline", {"p_value": 0.001})


@override_settings(ROLLOUT_JUDGE="tests.rollouts.services.test_orchestrator._failing_judge")
def test_a_failing_verdict_during_the_soak_rolls_back_at_once(make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 20}, running=old)
    now = timezone.now()
    distribution = distribution_create(version=make_version(version="1.1.0"), strategy="canary", now=now)
    _advance(distribution, now)
    report_installs(offered(distribution, 0))
    _advance(distribution, now + timedelta(seconds=5))
    assert distribution.status == "rolled_back"
    canary = _stage(distribution, 0)
    assert canary.verdict == "fail" and canary.evidence["p_value"] == 0.001
    assert "+48 %" in distribution.status_reason


def test_rolling_a_model_back_restores_it_where_later_versions_run(make_fleet, make_version):
    v1, v2, v3 = make_version(version="1.0.0"), make_version(version="1.1.0"), make_version(version="2.0.0")
    on_v2 = make_fleet({"eu": 3}, running=v2)
    make_fleet({"us": 2}, running=v1)
    on_v3 = make_fleet({"ap": 1}, running=v3)
    distribution = model_version_rollback(version=v1)
    assert distribution.strategy == "direct" and distribution.is_rollback
    assert set(distribution.assignments.values_list("device_id", flat=True)) == {d.pk for d in on_v2 + on_v3}
    now = timezone.now()
    _advance(distribution, now)
    assert set(ModelSlot.objects.filter(version=v1).values_list("rollback", flat=True)) == {True}
    with pytest.raises(ApplicationError):
        model_version_rollback(version=v3)


def test_a_running_rollout_whose_version_turns_corrupt_pauses_offers_no_more_and_alerts(make_fleet, make_version,
                                                                                        caplog):
    now = timezone.now()
    distribution, new = canary_of_a_new_version(make_fleet, make_version, now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0))
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=5))
    assert model_version_status_change(version_id=new.pk, to=ModelVersion.Status.CORRUPT,
                                       scrub_error="sha256 changed")

    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=11))

    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.PAUSED
    assert "1.1.0" in distribution.status_reason and "sha256 changed" in distribution.status_reason
    assert offered(distribution, 1) == []  # the soak ended, yet the rest of the fleet is not offered it
    assert any(r.name == "hotswap.alerts" and "sha256 changed" in r.getMessage() for r in caplog.records)
    transition = Transition.objects.filter(distribution=distribution).order_by("-id").first()
    assert (transition.from_status, transition.to_status) == ("running", "paused")

    distribution_resume(distribution=distribution, actor=None)  # an operator cannot push it on
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=12))
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.PAUSED and offered(distribution, 1) == []
