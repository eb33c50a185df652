"""Fixtures for device tests: devices (with credentials), enrollment keys, registry versions, device clients."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from rest_framework.test import APIClient

from devices.models import Device, ModelSlot
from devices.services import checkin
from devices.services.credentials import device_credential_issue
from devices.services.enrollment import enrollment_key_create
from devices.services.registry import device_register
from models_app.models import AIModel, ModelVersion

_REGISTER_FIELDS = {"name", "device_type", "region", "tags", "cpu_cores", "memory_mb", "storage_gb", "gpu",
                    "registered_by", "enrollment_key"}
_numbers = itertools.count(1)


def _device(**fields) -> Device:
    device_id = fields.pop("device_id", None) or f"dev-{next(_numbers):05d}"
    register = {key: fields.pop(key) for key in list(fields) if key in _REGISTER_FIELDS}
    device = device_register(device_id=device_id, **register)
    if fields:  # what a device reports (status, last_seen, health): written as a check-in would
        Device.objects.filter(pk=device.pk).update(**fields)
        device.refresh_from_db()
    return device


@pytest.fixture(autouse=True)
def _forget_known_versions():
    # The check-in's cache of registry versions outlives a test's rolled-back rows.
    checkin._known_versions.clear()


@pytest.fixture
def make_device(db):
    """make_device(**fields) -> Device, registered through the service (no model slots yet).

    Registration fields go to device_register; anything else (status, last_seen, cpu_percent...) is
    written afterwards, as check-ins would. Slots: ModelSlot.objects.create or checkin_helpers.slot_set.
    """
    return _device


@pytest.fixture
def make_enrolled_device(db):
    """make_enrolled_device(**fields) -> (device, raw `hsd_…` credential)."""

    def make(**fields) -> tuple[Device, str]:
        device = _device(**fields)
        _credential, raw = device_credential_issue(device=device)
        return device, raw

    return make


@pytest.fixture
def make_enrollment_key(db):
    """make_enrollment_key(name="fleet", **kw) -> (EnrollmentKey, raw `hse_…` key)."""

    def make(name: str = "fleet", created_by=None, **fields):
        return enrollment_key_create(name=name, created_by=created_by, **fields)

    return make


@pytest.fixture
def make_version(db):
    """make_version(name="resnet", version="1.0.0", status="passed") -> a ModelVersion row (no artifact stored)."""

    def make(name: str = "resnet", version: str = "1.0.0", status: str = ModelVersion.Status.PASSED, **fields):
        ai_model, _ = AIModel.objects.get_or_create(name=name, defaults={"framework": "onnx"})
        major, minor, patch = (int(part) for part in version.split("-")[0].split("."))
        sha256 = hashlib.sha256(f"{name}-{version}".encode()).hexdigest()
        return ModelVersion.objects.create(
            ai_model=ai_model, version=version, model_id=f"{name}-{version}", major=major, minor=minor, patch=patch,
            prerelease="", is_release=True, storage_key=f"test/{name}/{version}", sha256=sha256, size_bytes=1234,
            detected_format="onnx", status=status, **fields,
        )

    return make


@pytest.fixture
def device_client():
    """An APIClient that sends `Authorization: Device <credential>`."""

    def make(credential: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Device {credential}")
        return client

    return make


@pytest.fixture
def make_slot(db):
    """make_slot(device, *, running=None, desired=None, **fields) -> the device's ModelSlot of that model (ORM).

    running: the version the device reports running; desired: the version it should run (sequence 1).
    """

    def make(device: Device, *, running: ModelVersion | None = None, desired: ModelVersion | None = None,
             **fields) -> ModelSlot:
        values = {"version": desired, "sequence": 1 if desired else 0, "running_version": running,
                  "reported_version": running.version if running else "",
                  "reported_sha256": running.sha256 if running else "", **fields}
        return ModelSlot.objects.create(device=device, ai_model=(desired or running).ai_model, **values)

    return make
