"""POST/GET/PUT/DELETE /api/v1/devices[/<device_id>]: pre-register with a credential, read, update, decommission."""

import pytest

from devices import selectors
from devices.models import DesiredState, Device, DeviceCredential

pytestmark = pytest.mark.django_db

NEW_DEVICE = {"device_id": "cam-0001", "name": "Lobby camera", "device_type": "edge-camera", "region": "eu-west",
              "tags": ["lobby", "gen2"], "capabilities": {"cpu_cores": 4, "memory_mb": 2048, "storage_gb": 32,
                                                          "gpu": "Jetson Nano"}}


def test_it_preregisters_a_device_and_shows_its_credential_once(client_for):
    response = client_for("Operator").post("/api/v1/devices", NEW_DEVICE, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["device_id"] == "cam-0001" and body["region"] == "eu-west" and body["status"] == "active"
    assert body["capabilities"] == NEW_DEVICE["capabilities"]
    assert body["desired"] == {"version": None, "rollback": False, "sequence": 0, "set_at": None, "source": "",
                               "reason": ""}
    key = body["credential"]["key"]
    assert key.startswith(f"hsd_{body['credential']['prefix']}_")
    device = Device.objects.get(device_id="cam-0001")
    assert selectors.device_for_credential(raw_credential=key) == device
    assert DesiredState.objects.filter(device=device).exists()
    detail = client_for("Viewer").get("/api/v1/devices/cam-0001").json()
    assert key not in str(detail)
    assert [c["prefix"] for c in detail["credentials"]] == [body["credential"]["prefix"]]


def test_it_refuses_a_duplicate_with_409(client_for, make_device):
    make_device(device_id="cam-0001")

    response = client_for("Operator").post("/api/v1/devices", NEW_DEVICE, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DEVICE_EXISTS"


@pytest.mark.parametrize(("body", "field"), [
    ({"device_id": "enroll"}, "device_id"),
    ({"device_id": "bad id"}, "device_id"),
    ({"device_id": "ok", "tags": "not-a-list"}, "tags"),
    ({"device_id": "ok", "capabilities": {"memory_mb": 0}}, "capabilities.memory_mb"),
    ({"device_id": "ok", "capabilities": {"tpu": 1}}, "capabilities.tpu"),
    ({"device_id": "ok", "colour": "red"}, "colour"),
    # The JSON types the OpenAPI document gives, not what DRF would coerce: 0 is no GPU name, 5 no device_id.
    ({"device_id": 5}, "device_id"),
    ({"device_id": "ok", "capabilities": {"gpu": 0}}, "capabilities.gpu"),
    ({"device_id": "ok", "capabilities": {"cpu_cores": True}}, "capabilities.cpu_cores"),
    ({"device_id": "ok", "capabilities": {"memory_mb": "1024"}}, "capabilities.memory_mb"),
    ({"device_id": "ok", "tags": ["ok", 7]}, "tags"),
])
def test_it_refuses_invalid_devices(client_for, body, field):
    response = client_for("Operator").post("/api/v1/devices", body, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in [detail["field"] for detail in error["details"]]
    assert not Device.objects.exists()


def test_it_gets_one_device_or_404(client_for, make_device):
    make_device(device_id="cam-1", region="eu-west")
    client = client_for("Viewer")

    assert client.get("/api/v1/devices/cam-1").json()["region"] == "eu-west"
    missing = client.get("/api/v1/devices/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "DEVICE_NOT_FOUND"


def test_it_updates_the_fields_given_and_keeps_the_rest(client_for, make_device):
    make_device(device_id="cam-1", name="Old", region="eu-west", tags=["a"], memory_mb=1024, cpu_cores=2,
                reported_model="resnet")

    response = client_for("Operator").put("/api/v1/devices/cam-1", {
        "device_id": "cam-1", "name": "New", "tags": ["b", "c"], "capabilities": {"memory_mb": 4096, "gpu": None},
    }, format="json")

    assert response.status_code == 200, response.content
    device = Device.objects.get(device_id="cam-1")
    assert (device.name, device.region, device.tags) == ("New", "eu-west", ["b", "c"])
    assert (device.memory_mb, device.cpu_cores, device.gpu, device.reported_model) == (4096, 2, "", "resnet")
    assert response.json()["capabilities"]["memory_mb"] == 4096


def test_it_reports_every_update_error_in_the_standard_format(client_for, make_device):
    make_device(device_id="cam-1", name="Old")

    response = client_for("Operator").put("/api/v1/devices/cam-1", {
        "name": "n" * 200, "region": ["not", "a", "string"],
        "capabilities": {"cpu_cores": -1, "memory_mb": "lots"}, "status": "active",
    }, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert {"trace_id", "timestamp", "message"} <= set(error)
    fields = {detail["field"] for detail in error["details"]}
    assert fields == {"name", "region", "capabilities.cpu_cores", "capabilities.memory_mb", "status"}
    assert Device.objects.get(device_id="cam-1").name == "Old"


def test_it_refuses_to_rename_a_device(client_for, make_device):
    make_device(device_id="cam-1")

    response = client_for("Operator").put("/api/v1/devices/cam-1", {"device_id": "cam-2"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == [{"field": "device_id", "message": "Does not match the URL."}]


def test_it_decommissions_on_delete_idempotently(client_for, make_enrolled_device):
    device, _raw = make_enrolled_device(device_id="cam-1")
    client = client_for("Operator")

    assert client.delete("/api/v1/devices/cam-1").status_code == 204
    assert client.delete("/api/v1/devices/cam-1").status_code == 204

    device.refresh_from_db()
    assert device.status == Device.Status.DECOMMISSIONED
    assert not DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).exists()
    assert client.get("/api/v1/devices/cam-1").json()["status"] == "decommissioned"
    assert client.delete("/api/v1/devices/nope").status_code == 404
