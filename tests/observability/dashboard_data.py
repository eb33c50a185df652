"""A simulated rollout for the dashboard's tests: a fleet in three regions, a rolled-back canary, a running one,
and the metric windows their devices reported, rolled up as the worker would."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from devices.models import Device, MetricWindow, ModelSlot
from devices.services.telemetry import metric_rollup_recent
from models_app.models import ModelVersion
from rollouts.models import Assignment, Distribution
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create, distribution_rollback
from tests.rollouts.conftest import offered, report_installs

MINUTE = timedelta(minutes=1)


def runs(devices: list[Device], version: ModelVersion) -> None:
    """The devices report they run `version` (in its model's slot), as their check-ins would."""
    ModelSlot.objects.bulk_create(
        [ModelSlot(device=device, ai_model_id=version.ai_model_id, running_version=version,
                   reported_version=version.version, reported_sha256=version.sha256) for device in devices],
        update_conflicts=True, unique_fields=["device", "ai_model"],
        update_fields=["running_version", "reported_version", "reported_sha256"])


def windows(devices: list[Device], version: ModelVersion, *, start: datetime, end: datetime, latency: float,
            errors: float = 0.001, inferences: int = 200, seed: int = 1) -> None:
    """One metric window a minute per device over [start, end), p99 latency around `latency` ms."""
    rng = random.Random(seed)
    rows, minute = [], start
    while minute < end:
        for device in devices:
            p99 = max(0.5, rng.gauss(latency, latency * 0.04))
            rows.append(MetricWindow(
                device=device, version=version, model_name=version.ai_model.name, model_version=version.version,
                window_start=minute, window_end=minute + timedelta(seconds=59), inference_count=inferences,
                error_count=round(inferences * errors), latency_p50_ms=p99 / 2, latency_p95_ms=p99 * 0.9,
                latency_p99_ms=p99))
        minute += MINUTE
    MetricWindow.objects.bulk_create(rows)


def _stage_devices(distribution: Distribution, index: int) -> list[Device]:
    return [a.device for a in Assignment.objects.filter(distribution=distribution, stage__index=index)
            .select_related("device").order_by("device__device_id")]


@dataclass
class Rollout:
    """What simulated_rollout built: the versions, the two distributions, and when it happened."""

    old: ModelVersion
    bad: ModelVersion
    new: ModelVersion
    rolled_back: Distribution
    running: Distribution
    now: datetime


def simulated_rollout(make_fleet, make_version, *, now: datetime | None = None) -> Rollout:
    """eu 12, us 8 (3 offline, 1 more decommissioned), ap 6 + 2 that report nothing; all others on 1.0.0.

    40 minutes ago 1.0.1 went to half of ap as a canary, ran slow and was rolled back 25 minutes ago; 15
    minutes ago 1.1.0 started as a 25 % canary over eu and us: 3 devices of its first stage run it (a little
    slower), the others still install.
    """
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    old, bad, new = (make_version(version=v) for v in ("1.0.0", "1.0.1", "1.1.0"))
    fleet = make_fleet({"eu": 12, "us": 9, "ap": 6}, running=old)
    make_fleet({"ap": 2})
    runs(fleet, old)
    us = [d for d in fleet if d.region == "us"]
    Device.objects.filter(pk=us[-1].pk).update(status=Device.Status.DECOMMISSIONED)
    Device.objects.filter(pk__in=[d.pk for d in us[-4:-1]]).update(status=Device.Status.OFFLINE)
    reporting = [d for d in fleet if d not in us[-4:]]

    rolled_back = distribution_create(version=bad, strategy="canary", config={"percent": 50, "soak": "PT30M"},
                                      target={"regions": ["ap"]}, name="ap canary of 1.0.1", now=now - 40 * MINUTE)
    distribution_advance(distribution_id=rolled_back.pk, now=now - 40 * MINUTE)
    report_installs(offered(rolled_back, 0), now=now - 39 * MINUTE)
    distribution_advance(distribution_id=rolled_back.pk, now=now - 39 * MINUTE + timedelta(seconds=1))
    canaries = [d for d in _stage_devices(rolled_back, 0) if d.slots.exists()]
    windows(canaries, bad, start=now - 38 * MINUTE, end=now - 25 * MINUTE, latency=45.0, errors=0.02, seed=2)
    rolled_back.refresh_from_db()
    distribution_rollback(distribution=rolled_back, reason="p99 latency regression", now=now - 25 * MINUTE)

    running = distribution_create(version=new, strategy="canary", config={"percent": 25, "soak": "PT30M"},
                                  target={"regions": ["eu", "us"]}, name="eu+us canary of 1.1.0",
                                  now=now - 15 * MINUTE)
    distribution_advance(distribution_id=running.pk, now=now - 15 * MINUTE)
    installed = offered(running, 0)[:3]
    report_installs(installed, now=now - 14 * MINUTE)
    distribution_advance(distribution_id=running.pk, now=now - 14 * MINUTE + timedelta(seconds=1))
    upgraded = [a.device for a in Assignment.objects.filter(pk__in=[a.pk for a in installed]).select_related("device")]
    runs(upgraded, new)
    windows(upgraded, new, start=now - 13 * MINUTE, end=now, latency=26.0, errors=0.005, seed=3)
    windows([d for d in reporting if d not in upgraded], old, start=now - 45 * MINUTE, end=now, latency=20.0,
            seed=4)
    metric_rollup_recent(now=timezone.now() + timedelta(seconds=1))
    for distribution in (rolled_back, running):
        distribution.refresh_from_db()
    return Rollout(old=old, bad=bad, new=new, rolled_back=rolled_back, running=running, now=now)
