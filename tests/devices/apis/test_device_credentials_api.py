"""POST /devices/<id>/credentials and DELETE /devices/<id>/credentials/<credential_id>: issue once, revoke."""

import pytest
from django.test import Client

from devices import selectors
from devices.models import DeviceCredential
from tests.devices.checkin_helpers import checkin

pytestmark = pytest.mark.django_db


def test_it_issues_a_credential_once_and_locks_out_the_old_one(client_for, make_enrolled_device):
    _device, old = make_enrolled_device(device_id="cam-1")

    response = client_for("Operator").post("/api/v1/devices/cam-1/credentials", {}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith(f"hsd_{body['prefix']}_") and body["revoked_at"] is None
    assert checkin(Client(), old).status_code == 401
    assert checkin(Client(), body["key"]).status_code == 200
    stored = DeviceCredential.objects.get(pk=body["id"])
    assert body["key"].split("_", 2)[2] not in stored.key_hash


def test_it_can_keep_the_existing_credentials(client_for, make_enrolled_device):
    device, old = make_enrolled_device(device_id="cam-1")

    response = client_for("Operator").post("/api/v1/devices/cam-1/credentials", {"revoke_existing": False},
                                           format="json")

    assert response.status_code == 201
    assert selectors.device_for_credential(raw_credential=old) == device


def test_it_revokes_a_credential_so_the_device_is_locked_out(client_for, make_enrolled_device):
    device, raw = make_enrolled_device(device_id="cam-1")
    credential = DeviceCredential.objects.get(device=device)
    client = client_for("Operator")

    assert client.delete(f"/api/v1/devices/cam-1/credentials/{credential.pk}").status_code == 204
    assert client.delete(f"/api/v1/devices/cam-1/credentials/{credential.pk}").status_code == 204

    response = checkin(Client(), raw)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "DEVICE_CREDENTIAL_INVALID"
    listed = client.get("/api/v1/devices/cam-1").json()["credentials"]
    assert listed[0]["id"] == credential.pk and listed[0]["revoked_at"] is not None


def test_it_does_not_revoke_another_devices_credential_through_this_one(client_for, make_enrolled_device):
    make_enrolled_device(device_id="cam-1")
    other, other_raw = make_enrolled_device(device_id="cam-2")
    credential = DeviceCredential.objects.get(device=other)

    response = client_for("Operator").delete(f"/api/v1/devices/cam-1/credentials/{credential.pk}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "CREDENTIAL_NOT_FOUND"
    assert selectors.device_for_credential(raw_credential=other_raw) == other


def test_it_refuses_a_credential_for_a_decommissioned_device(client_for, make_enrolled_device):
    make_enrolled_device(device_id="cam-1")
    client = client_for("Operator")
    client.delete("/api/v1/devices/cam-1")

    response = client.post("/api/v1/devices/cam-1/credentials", {}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DEVICE_DECOMMISSIONED"
