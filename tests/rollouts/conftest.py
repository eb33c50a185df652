"""Fixtures for rollout tests: a fleet of devices, passed versions, and a way to play the devices' part."""

from __future__ import annotations

import itertools

import pytest
from django.utils import timezone

from devices.models import Device, InstallReport, ModelSlot
from models_app.models import ModelVersion
from rollouts.models import Assignment
from tests.devices.conftest import make_device, make_enrolled_device, make_version  # noqa: F401 - fixtures

_fleet_numbers = itertools.count(1)


BASE = "resnet-0.1.0"
_DEFAULT = object()
# What a fleet runs when make_fleet is not told: nothing, except in the rollout tests (the fixture below).
_fleet_defaults = {"running": None}


@pytest.fixture(autouse=True)
def _rollout_fleets_run_resnet():
    """In rollout tests a fleet runs resnet-0.1.0 unless told otherwise, so that a distribution of resnet
    without a target reaches it (an upgrade). Other apps importing make_fleet get fleets that run nothing."""
    _fleet_defaults["running"] = BASE
    yield
    _fleet_defaults["running"] = None


@pytest.fixture
def make_fleet(db, make_device, make_version):  # noqa: F811
    """make_fleet({"eu": 30, "us": 10}, device_type="edge-camera", running=version) -> [Device].

    `running`: a version (or a list of versions of different models) each device's slots run; None: no model.
    """

    def make(regions: dict[str, int], *, device_type: str = "edge-camera", running=_DEFAULT, **fields) -> list[Device]:
        devices = []
        batch = next(_fleet_numbers)
        for region, count in regions.items():
            for n in range(count):
                devices.append(make_device(device_id=f"f{batch}-{region}-{n:04d}", region=region,
                                           device_type=device_type, memory_mb=4096, **fields))
        if running is _DEFAULT:
            running = _fleet_defaults["running"]
        if running == BASE:
            running = ModelVersion.objects.filter(model_id=BASE).first() or make_version("resnet", "0.1.0")
        for version in running if isinstance(running, list) else [running] if running is not None else []:
            slots_run(devices, version)
        return devices

    return make


def slots_run(devices, version) -> None:
    """The devices report running `version` (what the heartbeat flush writes into their slots of its model)."""
    ModelSlot.objects.bulk_create(
        [ModelSlot(device_id=getattr(device, "pk", device), ai_model_id=version.ai_model_id, running_version=version,
                   reported_version=version.version) for device in devices],
        update_conflicts=True, unique_fields=["device", "ai_model"], update_fields=["running_version",
                                                                                    "reported_version"])


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
