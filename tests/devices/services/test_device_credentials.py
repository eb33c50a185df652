"""device_credential_issue / _revoke: shown once, stored hashed, revocation locks the device out."""

import hashlib

import pytest
from django.test import Client

from devices import selectors
from devices.models import DeviceCredential
from devices.services.credentials import device_credential_issue, device_credential_revoke
from tests.devices.checkin_helpers import checkin

pytestmark = pytest.mark.django_db


def test_it_returns_the_key_once_and_stores_only_its_hash(make_device):
    device = make_device()

    credential, raw = device_credential_issue(device=device)

    kind, prefix, secret = raw.split("_", 2)
    assert (kind, prefix) == ("hsd", credential.prefix)
    stored = DeviceCredential.objects.get(pk=credential.pk)
    assert stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str([getattr(stored, f.attname) for f in DeviceCredential._meta.concrete_fields])
    assert selectors.device_for_credential(raw_credential=raw) == device


def test_it_revokes_the_other_credentials_by_default(make_enrolled_device):
    device, old = make_enrolled_device()

    _credential, new = device_credential_issue(device=device)

    assert selectors.device_for_credential(raw_credential=old) is None
    assert selectors.device_for_credential(raw_credential=new) == device
    assert checkin(Client(), old).status_code == 401
    assert checkin(Client(), new).status_code == 200


def test_it_can_keep_the_other_credentials(make_enrolled_device):
    device, old = make_enrolled_device()

    device_credential_issue(device=device, revoke_existing=False)

    assert selectors.device_for_credential(raw_credential=old) == device


def test_it_revokes_one_credential_so_it_no_longer_works(make_enrolled_device):
    device, raw = make_enrolled_device()
    credential = DeviceCredential.objects.get(device=device)

    device_credential_revoke(credential=credential)

    assert selectors.device_for_credential(raw_credential=raw) is None
    response = checkin(Client(), raw)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "DEVICE_CREDENTIAL_INVALID"


def test_it_keeps_the_first_revocation_when_revoked_twice(make_enrolled_device):
    device, _raw = make_enrolled_device()
    credential = device_credential_revoke(credential=DeviceCredential.objects.get(device=device))
    first = credential.revoked_at

    again = device_credential_revoke(credential=credential)

    assert again.revoked_at == first


@pytest.mark.parametrize("raw", ["", "hsd_", "hse_abcdef12_secret", "hsd_abcdef12_wrong-secret", "Bearer x"])
def test_it_recognises_no_device_from_a_bad_credential(make_enrolled_device, raw):
    make_enrolled_device()

    assert selectors.device_for_credential(raw_credential=raw) is None
