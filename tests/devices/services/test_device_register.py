"""device_register / device_preregister / device_update: validated writes; a new device has no model slots yet."""

import pytest
from django.core.exceptions import ValidationError

from devices.models import Device, DeviceCredential
from devices.services.registry import device_preregister, device_register, device_update
from hotswap.exceptions import ApplicationError, ConflictError

pytestmark = pytest.mark.django_db


def test_it_registers_a_device_with_no_model_slots():
    device = device_register(device_id="cam-0001", name="Lobby", device_type="edge-camera", region="eu-west",
                             tags=["lobby", " gen2 ", "lobby", ""], cpu_cores=4, memory_mb=2048, storage_gb=32,
                             gpu=None)

    device.refresh_from_db()
    assert device.status == Device.Status.ACTIVE
    assert device.tags == ["lobby", "gen2"]
    assert device.gpu == ""
    assert not device.slots.exists()  # it runs whatever it has; its check-ins add its slots


@pytest.mark.parametrize("device_id", ["enroll", "checkin", "manifest-key", "desired", "Enroll"])
def test_it_refuses_device_ids_that_collide_with_routes(device_id):
    with pytest.raises(ApplicationError) as caught:
        device_register(device_id=device_id)

    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details[0]["field"] == "device_id"
    assert not Device.objects.exists()


def test_it_refuses_a_duplicate_device_id_with_a_conflict(make_device):
    make_device(device_id="cam-1")

    with pytest.raises(ConflictError) as caught:
        device_register(device_id="cam-1")

    assert caught.value.code == "DEVICE_EXISTS"
    assert Device.objects.count() == 1


@pytest.mark.parametrize(("fields", "field"), [
    ({"device_id": "-starts-with-dash"}, "device_id"),
    ({"device_id": "has space"}, "device_id"),
    ({"device_id": "ok", "name": "n" * 129}, "name"),
    ({"device_id": "ok", "tags": ["t" * 65]}, "tags"),
    ({"device_id": "ok", "memory_mb": -1}, "memory_mb"),
])
def test_it_validates_every_field_before_saving(fields, field):
    with pytest.raises(ValidationError) as caught:
        device_register(**fields)

    assert field in caught.value.message_dict
    assert not Device.objects.exists()


def test_it_refuses_too_many_tags():
    with pytest.raises(ApplicationError) as caught:
        device_register(device_id="cam-1", tags=[f"t{i}" for i in range(33)])

    assert caught.value.details == [{"field": "tags", "message": "A device has at most 32 tags."}]


def test_it_preregisters_a_device_with_its_first_credential(make_user):
    operator = make_user("Operator")

    device, credential, key = device_preregister(device_id="cam-9", registered_by=operator, region="us-east")

    assert device.registered_by == operator
    assert credential.device == device and credential.created_by == operator
    assert key.startswith(f"hsd_{credential.prefix}_")


def test_it_updates_descriptive_fields_and_leaves_reported_ones(make_device):
    device = make_device(device_id="cam-1", region="eu-west", cpu_percent=12.5)
    stale = Device.objects.get(pk=device.pk)
    Device.objects.filter(pk=device.pk).update(memory_percent=33.0)  # a check-in lands meanwhile

    device_update(device=stale, region="us-east", tags=["a", "a", "b"], memory_mb=4096, gpu=None)

    device.refresh_from_db()
    assert (device.region, device.tags, device.memory_mb, device.gpu) == ("us-east", ["a", "b"], 4096, "")
    assert (device.memory_percent, device.cpu_percent) == (33.0, 12.5)


def test_it_refuses_to_update_reported_or_unknown_fields(make_device):
    device = make_device()

    with pytest.raises(ApplicationError) as caught:
        device_update(device=device, status="offline", colour="red")

    assert [d["field"] for d in caught.value.details] == ["colour", "status"]


def test_it_validates_updates(make_device):
    device = make_device(region="eu-west")

    with pytest.raises(ValidationError):
        device_update(device=device, region="r" * 65)

    device.refresh_from_db()
    assert device.region == "eu-west"
    assert not DeviceCredential.objects.exists()
