"""POST /api/v1/devices/enroll (no auth; devices/PROTOCOL.md §1): the answer, every refusal, the rate limit."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from devices.manifests import public_key_info
from devices.models import Device, EnrollmentKey
from tests.devices.checkin_helpers import checkin

pytestmark = pytest.mark.django_db

BODY = {"device_id": "cam-0001", "name": "Lobby camera", "device_type": "edge-camera", "region": "eu-west",
        "tags": ["lobby", "gen2"], "capabilities": {"cpu_cores": 4, "memory_mb": 2048, "storage_gb": 32, "gpu": None}}


def enroll(body: dict, **headers):
    return APIClient().post("/api/v1/devices/enroll", body, format="json", **headers)


def test_it_enrolls_a_device_as_the_protocol_says(make_enrollment_key):
    key, raw = make_enrollment_key(max_uses=10)

    response = enroll({"enrollment_key": raw, **BODY})

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"device_id", "credential", "protocol", "checkin_url", "poll_interval_seconds",
                         "manifest_public_key"}
    assert body["protocol"] == 2  # the check-in protocol the server speaks
    assert body["device_id"] == "cam-0001"
    assert body["credential"].startswith("hsd_")
    assert body["checkin_url"] == "/api/v1/devices/checkin"
    assert body["poll_interval_seconds"] == 60
    assert body["manifest_public_key"] == public_key_info()
    assert body["manifest_public_key"]["algorithm"] == "ed25519"
    device = Device.objects.get(device_id="cam-0001")
    assert (device.region, device.memory_mb, device.tags, device.enrollment_key) == ("eu-west", 2048,
                                                                                     ["lobby", "gen2"], key)
    assert not device.slots.exists()
    assert checkin(Client(), body["credential"]).status_code == 200


def test_it_needs_only_the_key_and_a_device_id(make_enrollment_key):
    _key, raw = make_enrollment_key()

    assert enroll({"enrollment_key": raw, "device_id": "bare"}).status_code == 201


def test_it_ignores_any_authorization_header(make_enrollment_key):
    _key, raw = make_enrollment_key()

    response = enroll({"enrollment_key": raw, "device_id": "cam-1"}, HTTP_AUTHORIZATION="Bearer garbage")

    assert response.status_code == 201


@pytest.mark.parametrize("state", ["unknown", "revoked", "expired", "used_up"])
def test_it_refuses_an_invalid_key_with_403(make_enrollment_key, state):
    key, raw = make_enrollment_key(max_uses=1)
    if state == "unknown":
        raw = raw[:-4] + "abcd"
    elif state == "revoked":
        EnrollmentKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    elif state == "expired":
        EnrollmentKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        assert enroll({"enrollment_key": raw, "device_id": "first"}).status_code == 201

    response = enroll({"enrollment_key": raw, **BODY})

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "ENROLLMENT_KEY_INVALID" and error["trace_id"]
    assert not Device.objects.filter(device_id="cam-0001").exists()


def test_it_refuses_an_existing_device_with_409(make_enrollment_key, make_device):
    make_device(device_id="cam-0001")
    _key, raw = make_enrollment_key()

    response = enroll({"enrollment_key": raw, **BODY})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DEVICE_EXISTS"


@pytest.mark.parametrize(("body", "field"), [
    ({"device_id": "cam-1"}, "enrollment_key"),
    ({"enrollment_key": "hse_x_y"}, "device_id"),
    ({"enrollment_key": "hse_x_y", "device_id": "no/slashes"}, "device_id"),
    ({"enrollment_key": "hse_x_y", "device_id": "cam-1", "capabilities": {"memory_mb": -5}}, "capabilities.memory_mb"),
    ({"enrollment_key": "hse_x_y", "device_id": "cam-1", "tags": [f"t{i}" for i in range(40)]}, "tags"),
    ({"enrollment_key": "hse_x_y", "device_id": "cam-1", "firmware": "2.1"}, "firmware"),
])
def test_it_refuses_invalid_bodies_with_400(body, field):
    response = enroll(body)

    assert response.status_code == 400
    assert field in [detail["field"] for detail in response.json()["error"]["details"]]


@pytest.mark.parametrize("device_id", ["enroll", "checkin", "manifest-key", "desired"])
def test_it_refuses_device_ids_reserved_by_routes(make_enrollment_key, device_id):
    key, raw = make_enrollment_key()

    response = enroll({"enrollment_key": raw, "device_id": device_id})

    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "device_id"
    key.refresh_from_db()
    assert key.uses == 0


def test_it_rate_limits_enrollment_per_client_address(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "enroll": "2/minute"}
    body = {"enrollment_key": "hse_00000000_guess", "device_id": "cam-1"}

    statuses = [enroll(body).status_code for _ in range(3)]
    elsewhere = enroll(body, REMOTE_ADDR="10.0.0.9")

    assert statuses == [403, 403, 429]
    assert elsewhere.status_code == 403
