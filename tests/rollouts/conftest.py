"""Fixtures for rollout tests: a fleet of devices, passed versions, and a way to play the devices' part."""

from __future__ import annotations

import itertools

import pytest
from django.utils import timezone

from devices.models import Device, InstallReport
from rollouts.models import Assignment
from tests.devices.conftest import make_device, make_enrolled_device, make_version  # noqa: F401 - fixtures

_fleet_numbers = itertools.count(1)


@pytest.fixture
def make_fleet(db, make_device):  # noqa: F811
    """make_fleet({"eu": 30, "us": 10}, device_type="edge-camera", running=version) -> [Device]."""

    def make(regions: dict[str, int], *, device_type: str = "edge-camera", running=None, **fields) -> list[Device]:
        devices = []
        batch = next(_fleet_numbers)
        for region, count in regions.items():
            for n in range(count):
                devices.append(make_device(device_id=f"f{batch}-{region}-{n:04d}", region=region,
                                           device_type=device_type, memory_mb=4096, **fields))
        if running is not None:
            Device.objects.filter(pk__in=[d.pk for d in devices]).update(current_version=running)
        return devices

    return make


def report_installs(assignments, status: str = "active", *, error: str = "", now=None) -> None:
    """Plays the devices: each assignment's device reports `status` for the version it was offered."""
    now = now or timezone.now()
    InstallReport.objects.bulk_create([
        InstallReport(device_id=a.device_id, version_id=a.version_id, model_name=a.version.ai_model.name,
                      model_version=a.version.version, status=status, error=error, sequence=a.sequence,
                      reported_at=now)
        for a in assignments
    ])


def offered(distribution, stage_index: int | None = None):
    query = Assignment.objects.filter(distribution=distribution, state=Assignment.State.OFFERED)
    if stage_index is not None:
        query = query.filter(stage__index=stage_index)
    return list(query.select_related("version__ai_model"))
