"""POST/GET/PUT/DELETE /api/v1/devices[/<device_id>]: pre-register with a credential, read, update, decommission."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices import selectors
from devices.models import Device, DeviceCredential, InstallReport, MetricWindow

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
    assert body["slots"] == []  # it runs whatever it has until its first check-in says what
    key = body["credential"]["key"]
    assert key.startswith(f"hsd_{body['credential']['prefix']}_")
    device = Device.objects.get(device_id="cam-0001")
    assert selectors.device_for_credential(raw_credential=key) == device
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
    ({"device_id": "ok", "tags": ["ok", "\u000b "]}, "tags.1"),  # only whitespace: blank once trimmed
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
                cpu_percent=12.5)

    response = client_for("Operator").put("/api/v1/devices/cam-1", {
        "device_id": "cam-1", "name": "New", "tags": ["b", "c"], "capabilities": {"memory_mb": 4096, "gpu": None},
    }, format="json")

    assert response.status_code == 200, response.content
    device = Device.objects.get(device_id="cam-1")
    assert (device.name, device.region, device.tags) == ("New", "eu-west", ["b", "c"])
    assert (device.memory_mb, device.cpu_cores, device.gpu, device.cpu_percent) == (4096, 2, "", 12.5)
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


def test_it_shows_every_slot_of_a_device_with_its_state_last_install_report_and_last_metric_window(
        client_for, make_device, make_version, make_slot):
    now = timezone.now()
    device = make_device(device_id="cam-1")
    detector_1, detector_2 = make_version("detector", "1.0.0"), make_version("detector", "1.1.0")
    recogniser, orientation = make_version("recogniser", "2.0.0"), make_version("orientation", "1.0.0")
    make_slot(device, running=detector_1, desired=detector_2, sequence=3, refused_sequence=3,
              refused_reason="1.1.0 is older than what runs; mark it a rollback")
    make_slot(device, running=recogniser, desired=recogniser, rollback=True, sequence=2)
    make_slot(device, running=orientation, remove=True, sequence=5)
    for minutes, status in ((2, "downloading"), (1, "refused")):
        InstallReport.objects.create(device=device, model_name="detector", model_version="1.1.0", status=status,
                                     sequence=3, error="older" if status == "refused" else "",
                                     reported_at=now - timedelta(minutes=minutes))
    for minutes, count in ((3, 100), (1, 600)):
        MetricWindow.objects.create(device=device, model_name="recogniser", model_version="2.0.0",
                                    window_start=now - timedelta(minutes=minutes + 1),
                                    window_end=now - timedelta(minutes=minutes), inference_count=count,
                                    error_count=0, latency_p50_ms=1, latency_p95_ms=2, latency_p99_ms=3)

    slots = client_for("Viewer").get("/api/v1/devices/cam-1").json()["slots"]

    assert [(s["model"], s["state"], s["sequence"], s["desired"]["action"], s["desired"]["rollback"])
            for s in slots] == [("detector", "refused", 3, "install", False), ("orientation", "removing", 5,
                                                                               "remove", False),
                                ("recogniser", "in_sync", 2, "install", True)]
    detector, orientation, recogniser = slots
    assert detector["refused_reason"] == "1.1.0 is older than what runs; mark it a rollback"
    assert detector["desired"]["version"] == "detector-1.1.0" and detector["running"]["model_id"] == "detector-1.0.0"
    assert (detector["last_install"]["status"], detector["last_install"]["error"]) == ("refused", "older")
    assert detector["last_metric_window"] is None
    assert orientation["desired"]["version"] is None and orientation["running"]["version"] == "1.0.0"
    assert orientation["last_install"] is None and recogniser["refused_reason"] is None
    assert recogniser["last_metric_window"]["inference_count"] == 600
