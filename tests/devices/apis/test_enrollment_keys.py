"""GET/POST /api/v1/enrollment-keys and DELETE /api/v1/enrollment-keys/<key_id>: Admin only; key shown once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import EnrollmentKey

pytestmark = pytest.mark.django_db


def test_it_creates_a_key_and_shows_it_once(client_for):
    client = client_for("Admin")
    expires = (timezone.now() + timedelta(days=1)).isoformat()

    response = client.post("/api/v1/enrollment-keys", {"name": "eu cameras", "expires_at": expires, "max_uses": 100},
                           format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith(f"hse_{body['prefix']}_")
    assert (body["uses"], body["max_uses"], body["revoked_at"]) == (0, 100, None)
    listed = client.get("/api/v1/enrollment-keys").json()
    assert listed["count"] == 1
    assert "key" not in listed["results"][0] and body["key"] not in str(listed)
    assert "key_hash" not in listed["results"][0]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"),
    ({"name": "k", "max_uses": 0}, "max_uses"),
    ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "k", "uses": 5}, "uses"),
])
def test_it_refuses_invalid_keys(client_for, body, field):
    response = client_for("Admin").post("/api/v1/enrollment-keys", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == field
    assert not EnrollmentKey.objects.exists()


def test_it_revokes_a_key(client_for, make_enrollment_key):
    key, raw = make_enrollment_key()
    client = client_for("Admin")

    assert client.delete(f"/api/v1/enrollment-keys/{key.pk}").status_code == 204
    assert client.delete(f"/api/v1/enrollment-keys/{key.pk}").status_code == 204

    key.refresh_from_db()
    assert key.revoked_at is not None
    enroll = client_for(None).post("/api/v1/devices/enroll", {"enrollment_key": raw, "device_id": "cam-1"},
                                   format="json")
    assert enroll.status_code == 403
    missing = client.delete("/api/v1/enrollment-keys/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ENROLLMENT_KEY_NOT_FOUND"
