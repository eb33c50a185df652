"""The per-model desired-state API: set a version (rollback explicit), remove a model, one device or a filter."""

import pytest

from devices.models import ModelSlot
from rollouts.services import distribution_create
from tests.rollouts.conftest import slots_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client_for):
    return client_for("Operator")


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def test_an_operator_sets_one_model_on_a_device_and_the_other_model_stays(operator, make_device, make_version):
    device = make_device(device_id="cam-1")
    magika = make_version("magika", "1.0.0")
    slots_run([device], magika)
    resnet = make_version("resnet", "1.0.0")

    response = operator.put("/api/v1/devices/cam-1/desired", {"version": resnet.model_id, "reason": "pilot"},
                            format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"matched": 1, "changed": 1, "unchanged": 0, "skipped": []}
    slot = ModelSlot.objects.get(device=device, ai_model=resnet.ai_model)
    assert (slot.version, slot.reason, slot.set_by.groups.get().name) == (resnet, "pilot", "Operator")
    assert ModelSlot.objects.get(device=device, ai_model=magika.ai_model).running_version == magika
    _error(operator.put("/api/v1/devices/nope/desired", {"version": resnet.model_id}, format="json"), 404,
           "DEVICE_NOT_FOUND")
    _error(operator.put("/api/v1/devices/cam-1/desired", {"version": "resnet-9.9.9"}, format="json"), 404,
           "MODEL_NOT_FOUND")
    _error(operator.put("/api/v1/devices/cam-1/desired", {"version": None}, format="json"), 400, "VALIDATION_ERROR")


def test_an_older_version_is_refused_until_marked_a_rollback(operator, make_device, make_version):
    device = make_device(device_id="cam-1")
    old, new = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    slots_run([device], new)

    refused = operator.put("/api/v1/devices/cam-1/desired", {"version": old.model_id}, format="json")
    accepted = operator.put("/api/v1/devices/cam-1/desired", {"version": old.model_id, "rollback": True},
                            format="json")

    error = _error(refused, 400, "ROLLBACK_NOT_MARKED")
    assert "set rollback to true" in error["message"]
    assert error["details"] == [{"field": "devices.cam-1",
                                 "message": "runs resnet-1.1.0; resnet-1.0.0 is older, so it is a rollback"}]
    assert accepted.status_code == 200 and accepted.json()["changed"] == 1
    assert ModelSlot.objects.get(device=device).rollback is True


def test_a_device_a_distribution_of_the_model_holds_answers_409_naming_it(operator, make_device, make_version):
    device = make_device(device_id="cam-1", memory_mb=4096)
    old = make_version("resnet", "1.0.0")
    slots_run([device], old)
    distribution = distribution_create(version=make_version("resnet", "1.1.0"), strategy="direct",
                                       name="resnet 1.1 everywhere")

    error = _error(operator.put("/api/v1/devices/cam-1/desired", {"version": old.model_id, "rollback": True},
                                format="json"), 409, "DISTRIBUTION_IN_PROGRESS")

    assert f"resnet 1.1 everywhere (#{distribution.pk})" in error["message"]
    assert ModelSlot.objects.get(device=device).sequence == 0  # nothing changed by the refusal


def test_removing_a_model_from_one_device_or_a_filter(operator, make_device, make_version):
    resnet, magika = make_version("resnet", "1.0.0"), make_version("magika", "1.0.0")
    eu = [make_device(device_id=f"eu-{n}", region="eu-west") for n in range(2)]
    us = make_device(device_id="us-1", region="us-east")
    slots_run([*eu, us], resnet)
    slots_run([*eu, us], magika)

    one = operator.post("/api/v1/devices/us-1/desired/remove", {"model": "resnet", "reason": "retired"},
                        format="json")
    by_region = operator.post("/api/v1/devices/desired/remove", {"model": "resnet", "regions": ["eu-west"]},
                              format="json")

    assert one.json() == {"matched": 1, "changed": 1, "unchanged": 0, "skipped": []}
    assert (by_region.json()["matched"], by_region.json()["changed"]) == (2, 2)
    assert set(ModelSlot.objects.filter(ai_model=resnet.ai_model).values_list("remove", "version")) == {(True, None)}
    assert not ModelSlot.objects.filter(ai_model=magika.ai_model, remove=True).exists()
    unknown = _error(operator.post("/api/v1/devices/us-1/desired/remove", {"model": "nope"}, format="json"), 400,
                     "VALIDATION_ERROR")
    assert unknown["details"] == [{"field": "model", "message": "Unknown model."}]
    _error(operator.post("/api/v1/devices/desired/remove", {"model": "resnet"}, format="json"), 400,
           "VALIDATION_ERROR")  # a filter is required


def test_an_operator_sets_a_filters_version(operator, make_device, make_version):
    make_device(device_id="eu-1", region="eu-west")
    make_device(device_id="eu-2", region="eu-west", tags=["lobby"])
    make_device(device_id="us-1", region="us-east", tags=["lobby"])
    version = make_version()

    by_region = operator.post("/api/v1/devices/desired", {"version": version.model_id, "regions": ["eu-west"]},
                              format="json").json()
    by_tag = operator.post("/api/v1/devices/desired", {"version": version.model_id, "tags": ["lobby"]},
                           format="json").json()

    assert (by_region["matched"], by_region["changed"]) == (2, 2)
    assert (by_tag["matched"], by_tag["changed"], by_tag["unchanged"]) == (2, 1, 1)
    _error(operator.post("/api/v1/devices/desired", {"version": version.model_id}, format="json"), 400,
           "VALIDATION_ERROR")


def test_a_filters_answer_counts_and_lists_the_devices_it_skips(operator, make_device, make_version):
    make_device(device_id="eu-1", region="eu-west", memory_mb=4096)
    make_device(device_id="eu-2", region="eu-west", memory_mb=512)
    make_device(device_id="eu-3", region="eu-west", memory_mb=4096, status="decommissioned")  # never targeted
    version = make_version(min_memory_mb=1024)

    answer = operator.post("/api/v1/devices/desired", {"version": version.model_id, "regions": ["eu-west"]},
                           format="json").json()

    assert answer == {"matched": 2, "changed": 1, "unchanged": 0, "skipped": [
        {"device_id": "eu-2", "reason": "eu-2 has 512 MB of memory, resnet-1.0.0 needs 1024 MB"}]}


def test_a_viewer_cannot_change_desired_state(client_for, make_device, make_version):
    make_device(device_id="cam-1")
    version = make_version()

    viewer = client_for("Viewer")

    assert viewer.put("/api/v1/devices/cam-1/desired", {"version": version.model_id}, format="json").status_code == 403
    assert viewer.post("/api/v1/devices/cam-1/desired/remove", {"model": "resnet"}, format="json").status_code == 403
    assert not ModelSlot.objects.exists()
