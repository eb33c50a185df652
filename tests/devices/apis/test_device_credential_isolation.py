"""A device credential opens no people endpoint: `Authorization: Device hsd_…` → 401, nothing changed."""

import pytest

from devices.models import Device, DeviceCredential

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("method", "path", "body"), [
    ("get", "/api/v1/devices/cam-other", None),
    ("get", "/api/v1/devices/cam-self", None),
    ("get", "/api/v1/devices", None),
    ("get", "/api/v1/devices/cam-other/metrics", None),
    ("put", "/api/v1/devices/cam-other", {"name": "hijacked"}),
    ("put", "/api/v1/devices/cam-self", {"name": "hijacked"}),
    ("delete", "/api/v1/devices/cam-other", None),
    ("post", "/api/v1/devices/cam-other/credentials", {}),
    ("post", "/api/v1/devices", {"device_id": "intruder"}),
    ("get", "/api/v1/enrollment-keys", None),
    ("post", "/api/v1/enrollment-keys", {"name": "mine"}),
])
def test_it_answers_401_to_a_device_credential_on_people_endpoints(make_enrolled_device, device_client, method, path,
                                                                   body):
    _me, raw = make_enrolled_device(device_id="cam-self", name="Self")
    make_enrolled_device(device_id="cam-other", name="Other")
    before = list(Device.objects.order_by("pk").values()), list(DeviceCredential.objects.order_by("pk").values())

    client = device_client(raw)
    response = getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)

    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    assert (list(Device.objects.order_by("pk").values()),
            list(DeviceCredential.objects.order_by("pk").values())) == before
