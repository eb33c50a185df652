"""POST /api/v1/models/{name}/versions/{version}/rollback: a Direct distribution back to that version."""

import pytest

from devices.models import ModelSlot
from models_app.models import ModelVersion
from rollouts.orchestrator import distribution_advance
from tests.rollouts.apis.conftest import create
from tests.rollouts.conftest import slots_run
from tests.test_error_format import assert_error_shape


def rollback(client, name: str = "resnet", version: str = "1.0.0"):
    return client.post(f"/api/v1/models/{name}/versions/{version}/rollback")


@pytest.fixture
def fleet(make_fleet, make_version):
    """resnet 1.0.0 on 3 devices, 1.1.0 on 4, 1.2.0 on 2; yolo 2.0.0 on 2."""
    versions = {v: make_version(version=v) for v in ("1.0.0", "1.1.0", "1.2.0")}
    on = {v: make_fleet({"eu": n}, running=versions[v]) for v, n in (("1.0.0", 3), ("1.1.0", 4), ("1.2.0", 2))}
    make_fleet({"eu": 2}, running=make_version(name="yolo", version="2.0.0"))
    return {"versions": versions, "on": on}


def test_it_restores_the_version_on_every_device_running_a_later_one(operator, fleet):
    response = rollback(operator)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["strategy"], body["version"], body["is_rollback"], body["rollback_policy"]) == (
        "direct", "resnet-1.0.0", True, "manual")
    assert body["name"] == "Roll back to resnet-1.0.0" and body["created_by"] == "olga"
    assert body["target"] == {"versions": ["resnet-1.1.0", "resnet-1.2.0"]}
    assert body["device_count"] == 6 and body["stages"][0]["soak_seconds"] == 0

    distribution_advance(distribution_id=body["id"])
    later = fleet["on"]["1.1.0"] + fleet["on"]["1.2.0"]
    desired = ModelSlot.objects.filter(device__in=later)
    assert {(d.version.model_id, d.rollback) for d in desired} == {("resnet-1.0.0", True)}
    assert not ModelSlot.objects.filter(device__in=fleet["on"]["1.0.0"], version__isnull=False).exists()


def test_a_deprecated_version_can_be_restored(operator, fleet):
    ModelVersion.objects.filter(model_id="resnet-1.0.0").update(status=ModelVersion.Status.DEPRECATED)

    assert rollback(operator).status_code == 201


def test_it_refuses_a_version_that_failed_validation(operator, fleet):
    ModelVersion.objects.filter(model_id="resnet-1.0.0").update(status=ModelVersion.Status.FAILED)

    assert_error_shape(rollback(operator), 400, "VERSION_NOT_DISTRIBUTABLE")


def test_there_is_nothing_to_roll_back_from_the_latest_version(operator, fleet):
    error = assert_error_shape(rollback(operator, version="1.2.0"), 400, "NOTHING_TO_ROLL_BACK")

    assert error["message"] == "No version of resnet later than 1.2.0 exists."


def test_it_needs_a_device_running_a_later_version(operator, fleet):
    slots_run(fleet["on"]["1.1.0"] + fleet["on"]["1.2.0"], fleet["versions"]["1.0.0"])

    assert_error_shape(rollback(operator), 400, "NO_TARGET_DEVICES")


@pytest.mark.parametrize(("name", "version"), [("resnet", "0.9.0"), ("bert", "1.0.0")])
def test_it_answers_404_for_an_unknown_model_or_version(operator, fleet, name, version):
    assert_error_shape(rollback(operator, name, version), 404, "MODEL_NOT_FOUND")


def test_it_refuses_devices_of_a_running_distribution(operator, fleet):
    running = create(operator, version="resnet-1.2.0", strategy="direct",
                     target={"running_versions": ["resnet-1.1.0"]})

    error = assert_error_shape(rollback(operator), 409, "DISTRIBUTION_IN_PROGRESS")

    assert error["conflicts"] == [{"distribution": running["id"], "name": f"distribution {running['id']}",
                                   "devices": 4}]
    # Once the running distribution is aborted, its devices are free.
    operator.post(f"/api/v1/distributions/{running['id']}/abort")
    assert rollback(operator).status_code == 201
