"""Enrollment keys and device_enroll: every refusal, uses claimed atomically, racing devices never exceed max_uses."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from devices import selectors
from devices.models import Device, DeviceCredential, EnrollmentKey
from devices.services.enrollment import device_enroll, enrollment_key_create, enrollment_key_revoke
from hotswap.exceptions import ApplicationError, ConflictError

pytestmark = pytest.mark.django_db


def assert_invalid_key(raw_key: str, device_id: str = "cam-1", **kwargs) -> None:
    with pytest.raises(ApplicationError) as caught:
        device_enroll(raw_key=raw_key, device_id=device_id, **kwargs)
    assert (caught.value.code, caught.value.status_code) == ("ENROLLMENT_KEY_INVALID", 403)
    assert not Device.objects.filter(device_id=device_id).exists()


def test_it_creates_a_key_shown_once_and_stored_hashed(make_user):
    admin = make_user("Admin")

    key, raw = enrollment_key_create(name="eu cameras", created_by=admin, max_uses=10)

    assert raw.startswith(f"hse_{key.prefix}_")
    assert raw.split("_", 2)[2] not in key.key_hash
    assert (key.uses, key.max_uses, key.created_by) == (0, 10, admin)


@pytest.mark.parametrize(("fields", "field"), [
    ({"expires_at": timezone.now() - timedelta(seconds=1)}, "expires_at"),
    ({"max_uses": 0}, "max_uses"),
])
def test_it_refuses_a_key_that_could_never_be_used(fields, field):
    with pytest.raises(ApplicationError) as caught:
        enrollment_key_create(name="k", created_by=None, **fields)

    assert caught.value.details[0]["field"] == field
    assert not EnrollmentKey.objects.exists()


def test_it_enrolls_a_device_with_its_credential(make_enrollment_key):
    key, raw = make_enrollment_key(max_uses=5)

    device, credential = device_enroll(
        raw_key=raw, device_id="cam-0001", name="Lobby camera", device_type="edge-camera", region="eu-west",
        tags=["lobby", "gen2"], capabilities={"cpu_cores": 4, "memory_mb": 2048, "storage_gb": 32, "gpu": None},
    )

    device.refresh_from_db()
    assert (device.enrollment_key, device.memory_mb, device.gpu, device.tags) == (key, 2048, "", ["lobby", "gen2"])
    assert not device.slots.exists()
    assert selectors.device_for_credential(raw_credential=credential) == device
    key.refresh_from_db()
    assert key.uses == 1


def test_it_refuses_an_unknown_or_malformed_key(make_enrollment_key):
    _key, raw = make_enrollment_key()
    _kind, prefix, secret = raw.split("_", 2)

    for bad in ["", "nonsense", f"hsd_{prefix}_{secret}", f"hse_{prefix}_x{secret}", f"hse_00000000_{secret}"]:
        assert_invalid_key(bad)


def test_it_refuses_a_revoked_key(make_enrollment_key):
    key, raw = make_enrollment_key()
    enrollment_key_revoke(key=key, actor=None)

    assert_invalid_key(raw)
    key.refresh_from_db()
    assert key.uses == 0


def test_it_refuses_an_expired_key(make_enrollment_key):
    now = timezone.now()
    _key, raw = make_enrollment_key(expires_at=now + timedelta(hours=1))

    device_enroll(raw_key=raw, device_id="early", now=now)
    assert_invalid_key(raw, now=now + timedelta(hours=1, seconds=1))


def test_it_refuses_a_used_up_key(make_enrollment_key):
    key, raw = make_enrollment_key(max_uses=2)
    device_enroll(raw_key=raw, device_id="cam-1")
    device_enroll(raw_key=raw, device_id="cam-2")

    assert_invalid_key(raw, device_id="cam-3")
    key.refresh_from_db()
    assert key.uses == 2


def test_it_refuses_a_duplicate_device_and_gives_the_use_back(make_enrollment_key, make_device):
    make_device(device_id="cam-1")
    key, raw = make_enrollment_key(max_uses=1)

    with pytest.raises(ConflictError) as caught:
        device_enroll(raw_key=raw, device_id="cam-1")

    assert caught.value.code == "DEVICE_EXISTS"
    key.refresh_from_db()
    assert key.uses == 0
    assert not DeviceCredential.objects.exists()


def test_it_checks_the_key_before_saying_a_device_exists(make_device):
    make_device(device_id="cam-1")

    assert_invalid_key("hse_00000000_guess", device_id="someone-else")
    with pytest.raises(ApplicationError) as caught:
        device_enroll(raw_key="hse_00000000_guess", device_id="cam-1")
    assert caught.value.code == "ENROLLMENT_KEY_INVALID"


def test_it_refuses_unknown_capabilities(make_enrollment_key):
    key, raw = make_enrollment_key()

    with pytest.raises(ApplicationError) as caught:
        device_enroll(raw_key=raw, device_id="cam-1", capabilities={"tpu": "yes"})

    assert caught.value.details[0]["field"] == "capabilities.tpu"
    key.refresh_from_db()
    assert key.uses == 0


def test_it_revokes_a_key_once_and_keeps_enrolled_devices_working(make_enrollment_key):
    key, raw = make_enrollment_key()
    _device, credential = device_enroll(raw_key=raw, device_id="cam-1")
    first = enrollment_key_revoke(key=key, actor=None).revoked_at

    assert enrollment_key_revoke(key=key, actor=None).revoked_at == first
    assert selectors.device_for_credential(raw_credential=credential) is not None


@pytest.mark.django_db(transaction=True)
def test_it_lets_at_most_max_uses_devices_through_when_they_race(make_enrollment_key):
    key, raw = make_enrollment_key(max_uses=3)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def enroll(index: int) -> None:
        start.wait()
        try:
            device_enroll(raw_key=raw, device_id=f"racer-{index}")
            outcomes.append("enrolled")
        except ApplicationError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=enroll, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["ENROLLMENT_KEY_INVALID"] * 5 + ["enrolled"] * 3
    key.refresh_from_db()
    assert key.uses == 3
    assert Device.objects.filter(enrollment_key=key).count() == 3
    assert DeviceCredential.objects.count() == 3
