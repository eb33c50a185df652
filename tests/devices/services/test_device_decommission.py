"""device_decommission: status decommissioned, every credential revoked, history kept; idempotent."""

import pytest
from django.test import Client

from devices.models import Device, DeviceCredential, InstallReport
from devices.services.credentials import device_credential_issue
from devices.services.registry import device_decommission
from hotswap.exceptions import ConflictError
from tests.devices.checkin_helpers import checkin

pytestmark = pytest.mark.django_db


def test_it_revokes_every_credential_and_keeps_the_history(make_enrolled_device, make_user):
    device, _raw = make_enrolled_device(device_id="cam-1")
    device_credential_issue(device=device, revoke_existing=False)
    InstallReport.objects.create(device=device, model_name="m", model_version="1.0.0", status="active",
                                 reported_at=device.registered_at)

    device_decommission(device=device, actor=make_user("Operator"))

    device.refresh_from_db()
    assert device.status == Device.Status.DECOMMISSIONED
    assert DeviceCredential.objects.filter(device=device).count() == 2
    assert not DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).exists()
    assert InstallReport.objects.filter(device=device).count() == 1


def test_it_locks_the_device_out_at_its_next_call(make_enrolled_device):
    device, raw = make_enrolled_device()
    assert checkin(Client(), raw).status_code == 200

    device_decommission(device=device, actor=None)

    response = checkin(Client(), raw)
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] in ("DEVICE_CREDENTIAL_INVALID", "DEVICE_DECOMMISSIONED")


def test_it_runs_twice_with_the_same_result(make_enrolled_device):
    device, _raw = make_enrolled_device()
    device_decommission(device=device, actor=None)
    first = DeviceCredential.objects.get(device=device).revoked_at

    device_decommission(device=device, actor=None)

    assert DeviceCredential.objects.get(device=device).revoked_at == first
    assert Device.objects.get(pk=device.pk).status == Device.Status.DECOMMISSIONED


def test_it_issues_no_credential_to_a_decommissioned_device(make_device):
    device = make_device()
    device_decommission(device=device, actor=None)

    with pytest.raises(ConflictError) as caught:
        device_credential_issue(device=device)

    assert caught.value.code == "DEVICE_DECOMMISSIONED"
    assert not DeviceCredential.objects.filter(device=device).exists()
