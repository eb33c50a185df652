"""POST /api/v1/distributions/{id}/approve, /pause, /resume, /abort, /rollback: each action, and 409 when the
distribution's status does not allow it."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import ModelSlot
from hotswap.accounts.roles import Role
from rollouts.models import Assignment, Distribution
from rollouts.orchestrator import distribution_advance
from tests.rollouts.apis.conftest import act, create
from tests.rollouts.conftest import offered, report_installs
from tests.test_error_format import assert_error_shape


@pytest.fixture
def fleet(make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_version(version="1.1.0")
    make_version(version="1.2.0")
    return make_fleet({"eu": 10}, running=old)


def installed(distribution_id: int, *, now=None) -> None:
    """The orchestrator offers the current stage, every device installs it, the orchestrator moves on."""
    now = now or timezone.now()
    distribution_advance(distribution_id=distribution_id, now=now)
    report_installs(offered(Distribution.objects.get(pk=distribution_id)), now=now)
    distribution_advance(distribution_id=distribution_id, now=now + timedelta(seconds=1))


@pytest.fixture
def gated(operator, fleet) -> int:
    """A canary whose first stage passed its soak and waits for an operator's approval."""
    pk = create(operator, version="resnet-1.1.0", strategy="canary",
                strategy_config={"percent": 50, "soak": "PT0S", "gate": "manual"})["id"]
    installed(pk)
    return pk


@pytest.fixture
def ab_test(operator, fleet) -> int:
    """An A/B test of 1.1.0 against 1.2.0 whose window is over: an operator names the winner."""
    pk = create(operator, version="resnet-1.1.0", version_b="resnet-1.2.0",
                strategy_config={"split": 50, "window": "PT0S"})["id"]
    installed(pk)
    return pk


def test_it_approves_the_stage_waiting_for_approval(operator, gated):
    response = act(operator, gated, "approve")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "running" and body["approved_by"] == "olga"
    assert [(s["status"], s["approved_by"]) for s in body["stages"]] == [("passed", "olga"), ("pending", None)]


def test_a_second_approval_is_refused(operator, client_for, gated):
    assert act(operator, gated, "approve").status_code == 200

    error = assert_error_shape(act(client_for(Role.ADMIN), gated, "approve"), 409, "INVALID_TRANSITION")

    assert error["message"] == "Nothing waits for approval: stage 2 is pending."
    assert Distribution.objects.get(pk=gated).transitions.filter(to_status="passed").count() == 1


def test_the_distribution_goes_on_after_the_approval(operator, gated):
    act(operator, gated, "approve")
    distribution_advance(distribution_id=gated)

    status = operator.get(f"/api/v1/distributions/{gated}/status").json()

    assert status["current_stage"] == 1 and status["stages"][1]["status"] == "installing"
    assert status["stages"][1]["progress"]["offered"] == 5


def test_it_refuses_to_approve_when_nothing_waits(operator, fleet):
    pk = create(operator, version="resnet-1.1.0")["id"]

    error = assert_error_shape(act(operator, pk, "approve"), 409, "INVALID_TRANSITION")

    assert error["message"] == "A distribution that is scheduled has no gate to approve."


def test_a_winner_is_only_for_an_ab_test(operator, gated):
    error = assert_error_shape(act(operator, gated, "approve", {"winner": "resnet-1.1.0"}), 400, "VALIDATION_ERROR")

    assert error["details"][0]["field"] == "winner"
    assert Distribution.objects.get(pk=gated).stages.get(index=0).status == "awaiting_approval"


def test_it_promotes_the_ab_winner_to_every_device(operator, ab_test):
    status = operator.get(f"/api/v1/distributions/{ab_test}/status").json()
    assert status["waiting_for"] == "an operator to name the A/B winner (approve with a winner)"

    response = act(operator, ab_test, "approve", {"winner": "resnet-1.2.0"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["winner"] == "resnet-1.2.0"
    assert [(s["kind"], s["status"], s["device_count"]) for s in body["stages"]] == [
        ("ab_test", "passed", 5), ("rest", "pending", 5)]
    promoted = Assignment.objects.filter(distribution_id=ab_test, stage__index=1)
    assert set(promoted.values_list("version__model_id", flat=True)) == {"resnet-1.2.0"}


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 400, "VALIDATION_ERROR"),
    ({"winner": "resnet-1.0.0"}, 400, "VALIDATION_ERROR"),
    ({"winner": "resnet-7.0.0"}, 404, "MODEL_NOT_FOUND"),
])
def test_an_ab_test_needs_one_of_its_versions_as_winner(operator, ab_test, body, status, code):
    error = assert_error_shape(act(operator, ab_test, "approve", body), status, code)

    assert error["details"][0]["field"] == "winner"
    assert Distribution.objects.get(pk=ab_test).winner is None


def test_it_pauses_and_resumes(operator, fleet):
    pk = create(operator, version="resnet-1.1.0")["id"]
    distribution_advance(distribution_id=pk)

    paused = act(operator, pk, "pause", {"reason": "checking the dashboards"})
    assert paused.status_code == 200, paused.content
    assert (paused.json()["status"], paused.json()["status_reason"]) == ("paused", "checking the dashboards")
    error = assert_error_shape(act(operator, pk, "pause"), 409, "INVALID_TRANSITION")
    assert (error["message"], error["status"]) == ("Cannot pause a distribution that is paused.", "paused")

    resumed = act(operator, pk, "resume")
    assert resumed.status_code == 200, resumed.content
    assert (resumed.json()["status"], resumed.json()["status_reason"]) == ("running", "resumed by an operator")
    error = assert_error_shape(act(operator, pk, "resume"), 409, "INVALID_TRANSITION")
    assert error["message"] == "Cannot start or resume a distribution that is running."


def test_only_a_running_distribution_can_be_paused(operator, fleet):
    pk = create(operator, version="resnet-1.1.0")["id"]

    error = assert_error_shape(act(operator, pk, "pause"), 409, "INVALID_TRANSITION")

    assert error["status"] == "scheduled"


def test_it_aborts_for_good(operator, fleet):
    pk = create(operator, version="resnet-1.1.0", strategy="canary")["id"]
    distribution_advance(distribution_id=pk)

    response = act(operator, pk, "abort", {"reason": "wrong model"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["status_reason"]) == ("aborted", "wrong model")
    assert [s["status"] for s in body["stages"]] == ["cancelled", "cancelled"]
    assert not Assignment.objects.filter(distribution_id=pk, is_open=True).exists()
    for action in ("abort", "resume", "pause", "approve"):
        assert_error_shape(act(operator, pk, action), 409, "INVALID_TRANSITION")


def test_it_rolls_back_every_device_it_touched(operator, fleet):
    pk = create(operator, version="resnet-1.1.0", strategy="direct")["id"]
    installed(pk)

    response = act(operator, pk, "rollback", {"reason": "accuracy dropped"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["status_reason"], body["reverted_devices"]) == (
        "rolled_back", "accuracy dropped", 10)
    desired = ModelSlot.objects.filter(device__in=fleet)
    assert {(d.version.model_id, d.rollback) for d in desired} == {("resnet-1.0.0", True)}
    assert_error_shape(act(operator, pk, "rollback"), 409, "INVALID_TRANSITION")


def test_a_completed_distribution_can_still_be_rolled_back(operator, fleet):
    pk = create(operator, version="resnet-1.1.0", strategy="direct", strategy_config={"soak": "PT0S"})["id"]
    installed(pk)
    assert Distribution.objects.get(pk=pk).status == "completed"

    response = act(operator, pk, "rollback")

    assert response.status_code == 200, response.content
    assert response.json()["reverted_devices"] == 10
    assert response.json()["status_reason"] == "rolled back by an operator"


def test_what_an_aborted_distribution_installed_can_be_rolled_back(operator, fleet):
    pk = create(operator, version="resnet-1.1.0", strategy="direct")["id"]
    installed(pk)
    act(operator, pk, "abort")

    response = act(operator, pk, "rollback", {"reason": "undo the half rollout"})

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["reverted_devices"]) == ("rolled_back", 10)


def test_a_scheduled_distribution_is_aborted_not_rolled_back(operator, fleet):
    pk = create(operator, version="resnet-1.1.0")["id"]

    error = assert_error_shape(act(operator, pk, "rollback"), 409, "INVALID_TRANSITION")

    assert error["message"] == "Cannot roll back a distribution that is scheduled."


@pytest.mark.parametrize("action", ["approve", "pause", "resume", "abort", "rollback"])
def test_it_answers_404_for_an_unknown_distribution(operator, action):
    assert_error_shape(act(operator, 987654, action), 404, "DISTRIBUTION_NOT_FOUND")


@pytest.mark.parametrize(("action", "body", "field"), [
    ("pause", {"why": "typo"}, "why"),
    ("abort", {"reason": "x" * 501}, "reason"),
    ("approve", {"winner": ["resnet-1.1.0"]}, "winner"),
])
def test_it_refuses_a_malformed_body(operator, fleet, action, body, field):
    pk = create(operator, version="resnet-1.1.0")["id"]
    distribution_advance(distribution_id=pk)

    error = assert_error_shape(act(operator, pk, action, body), 400, "VALIDATION_ERROR")

    assert error["details"][0]["field"] == field
    assert Distribution.objects.get(pk=pk).status == "running"


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MODEL_DEVELOPER])
def test_readers_cannot_act(client_for, operator, fleet, role):
    pk = create(operator, version="resnet-1.1.0")["id"]

    for action in ("abort", "rollback"):
        assert_error_shape(act(client_for(role), pk, action), 403, "PERMISSION_DENIED")
    assert Distribution.objects.get(pk=pk).status == "scheduled"
