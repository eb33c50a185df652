"""desired_state_set: the one place desired state changes; idempotent, with reasons for skipped devices."""

import pytest
from django.utils import timezone

from devices.models import DesiredState, Device
from devices.services.desired_state import desired_state_set
from hotswap.exceptions import ApplicationError
from models_app.models import ModelVersion
from tests.devices.checkin_helpers import device_with_credential, registry_version

pytestmark = pytest.mark.django_db


def test_it_bumps_the_sequence_only_when_the_state_changes():
    device, _ = device_with_credential()
    version, _ = registry_version()

    first = desired_state_set(devices=[device], version=version, reason="go")
    again = desired_state_set(devices=[device], version=version, reason="go")

    assert (first.changed, again.changed, again.unchanged) == (1, 0, 1)
    state = DesiredState.objects.get(device=device)
    assert (state.version, state.sequence, state.reason, state.source) == (version, 1, "go", "manual")
    assert state.traceparent.startswith("00-")


def test_a_rollback_to_the_same_version_is_a_new_state():
    device, _ = device_with_credential()
    version, _ = registry_version()
    desired_state_set(devices=[device], version=version)

    result = desired_state_set(devices=[device], version=version, rollback=True)

    assert result.changed == 1
    assert DesiredState.objects.get(device=device).sequence == 2


def test_it_skips_decommissioned_and_unfit_devices_with_reasons():
    device_with_credential("fit", memory_mb=4096)
    small, _ = device_with_credential("small", memory_mb=256)
    device_with_credential("gone", status=Device.Status.DECOMMISSIONED)
    version, _ = registry_version(min_memory_mb=1024)

    result = desired_state_set(devices=Device.objects.all(), version=version)

    assert result.changed == 1
    reasons = {s["device_id"]: s["reason"] for s in result.skipped}
    assert "needs 1024 MB" in reasons["small"] and "decommissioned" in reasons["gone"]
    assert DesiredState.objects.get(device=small).version is None


def test_it_refuses_failed_versions_and_deprecated_ones_unless_rolling_back():
    device, _ = device_with_credential()
    version, _ = registry_version()
    ModelVersion.objects.filter(pk=version.pk).update(status="deprecated")
    version.refresh_from_db()

    with pytest.raises(ApplicationError, match="deprecated"):
        desired_state_set(devices=[device], version=version)
    assert desired_state_set(devices=[device], version=version, rollback=True).changed == 1

    ModelVersion.objects.filter(pk=version.pk).update(status="failed")
    version.refresh_from_db()
    with pytest.raises(ApplicationError, match="failed validation"):
        desired_state_set(devices=[device], version=version, rollback=True)

    ModelVersion.objects.filter(pk=version.pk).update(approved_at=timezone.now(), approval_reason="known issue")
    version.refresh_from_db()
    assert desired_state_set(devices=[device], version=version).changed == 1  # an Admin's override counts


def test_it_refuses_unexecuted_versions_until_an_admin_approves_them():
    device, _ = device_with_credential()
    version, _ = registry_version()
    ModelVersion.objects.filter(pk=version.pk).update(status="needs_approval")
    version.refresh_from_db()

    with pytest.raises(ApplicationError, match="must approve"):
        desired_state_set(devices=[device], version=version)


def test_clearing_the_desired_state_is_idempotent():
    device, _ = device_with_credential()
    version, _ = registry_version()
    desired_state_set(devices=[device], version=version)

    assert desired_state_set(devices=[device], version=None).changed == 1
    assert desired_state_set(devices=[device], version=None).changed == 0


def test_a_version_desired_on_a_device_cannot_be_deleted(client_for):
    device, _ = device_with_credential()
    version, _ = registry_version()
    desired_state_set(devices=[device], version=version)

    response = client_for("Admin").delete(f"/api/v1/models/{version.model_id}")

    assert response.status_code == 409
    assert "desired on 1" in response.json()["error"]["message"]


def test_an_operator_sets_one_devices_desired_version_through_the_api(client_for):
    device, _ = device_with_credential()
    version, _ = registry_version()
    operator = client_for("Operator")

    response = operator.put(f"/api/v1/devices/{device.device_id}/desired",
                            {"version": version.model_id, "reason": "pilot"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json() == {"matched": 1, "changed": 1, "unchanged": 0, "skipped": []}
    assert DesiredState.objects.get(device=device).set_by.groups.get().name == "Operator"
    assert operator.put("/api/v1/devices/nope/desired", {"version": None}, format="json").status_code == 404
    missing = operator.put(f"/api/v1/devices/{device.device_id}/desired", {"version": "resnet-9.9.9"}, format="json")
    assert missing.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_an_operator_sets_a_filters_desired_version_through_the_api(client_for):
    device_with_credential("eu-1", region="eu-west")
    device_with_credential("eu-2", region="eu-west", tags=["lobby"])
    device_with_credential("us-1", region="us-east", tags=["lobby"])
    version, _ = registry_version()
    operator = client_for("Operator")

    by_region = operator.post("/api/v1/devices/desired", {"version": version.model_id, "regions": ["eu-west"]},
                              format="json").json()
    by_tag = operator.post("/api/v1/devices/desired", {"version": version.model_id, "tags": ["lobby"]},
                           format="json").json()
    unfiltered = operator.post("/api/v1/devices/desired", {"version": version.model_id}, format="json")

    assert (by_region["matched"], by_region["changed"]) == (2, 2)
    assert (by_tag["matched"], by_tag["changed"], by_tag["unchanged"]) == (2, 1, 1)
    assert unfiltered.status_code == 400
