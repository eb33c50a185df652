"""The dashboard's reads: fleet figures in one grouped query each, the distributions worth watching."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from devices.models import Device, ModelSlot
from hotswap.dashboard.selectors import (
    chart_interval,
    dashboard_distributions,
    distribution_series,
    fleet_by_region,
    fleet_versions_by_model,
)
from rollouts.models import Distribution
from tests.observability.dashboard_data import simulated_rollout

pytestmark = pytest.mark.django_db


def test_it_counts_devices_online_and_offline_per_region_without_decommissioned_ones(make_device,
                                                                                    django_assert_num_queries):
    for region, status in [("eu", "active"), ("eu", "active"), ("eu", "offline"), ("us", "active"),
                           ("us", "decommissioned"), ("", "offline")]:
        make_device(region=region, status=status)

    with django_assert_num_queries(1):
        rows = fleet_by_region()

    assert rows == [{"region": "", "online": 0, "offline": 1, "total": 1},
                    {"region": "eu", "online": 2, "offline": 1, "total": 3},
                    {"region": "us", "online": 1, "offline": 0, "total": 1}]


def test_it_counts_the_versions_of_each_model_each_region_runs(make_device, make_version,
                                                                django_assert_num_queries):
    old, new, yolo = make_version(version="1.0.0"), make_version(version="1.1.0"), make_version("yolo", "1.0.0")

    def device(region, *running, status="active"):
        made = make_device(region=region, status=status)
        for model, version in running:
            ModelSlot.objects.create(device=made, ai_model=model.ai_model, reported_version=version,
                                     running_version=model if model.version == version else None)

    device("eu", (old, "1.0.0"), (yolo, "1.0.0"))  # two models: counted once under each
    device("eu", (old, "1.0.0"))
    device("eu", (new, "1.1.0"), status="offline")
    device("eu")  # nothing reported yet
    device("us", (yolo, "5.0.0"))  # not a registry version
    device("us", (new, "1.1.0"), status="decommissioned")
    ModelSlot.objects.create(device=make_device(region="us"), ai_model=new.ai_model, version=new)  # desired only

    with django_assert_num_queries(1):
        rows = fleet_versions_by_model()

    assert rows == [{"model": "resnet", "region": "eu", "version": "resnet-1.0.0", "devices": 2},
                    {"model": "resnet", "region": "eu", "version": "resnet-1.1.0", "devices": 1},
                    {"model": "yolo", "region": "eu", "version": "yolo-1.0.0", "devices": 1},
                    {"model": "yolo", "region": "us", "version": "yolo-5.0.0", "devices": 1}]


def test_open_distributions_come_first_then_those_finished_lately(make_version):
    version = make_version(version="1.1.0")
    now = timezone.now()
    for name, status, finished in [("old", "completed", now - timedelta(days=2)), ("done", "completed", now),
                                   ("rolled", "rolled_back", now - timedelta(hours=3)), ("paused", "paused", None),
                                   ("scheduled", "scheduled", None), ("running", "running", None)]:
        # Statuses are written directly: this reads them, it does not care how they came about.
        Distribution.objects.create(version=version, ai_model=version.ai_model, strategy="direct", name=name,
                                    scheduled_at=now, status=status, finished_at=finished)

    shown = dashboard_distributions(now=now)

    assert [d.name for d in shown] == ["running", "paused", "scheduled", "done", "rolled"]
    assert [d.name for d in dashboard_distributions(now=now, limit=2)] == ["running", "paused"]


@pytest.mark.parametrize(("running_for", "interval"), [
    (timedelta(minutes=10), 60), (timedelta(hours=1), 60), (timedelta(hours=3), 300), (timedelta(days=2), 3600),
    (timedelta(days=5), 14400), (timedelta(days=400), 86400)])
def test_charts_use_the_finest_resolution_that_keeps_lines_short(running_for, interval):
    now = timezone.now()
    distribution = SimpleNamespace(started_at=now - running_for, scheduled_at=now, finished_at=None)
    assert chart_interval(distribution, now=now) == interval


def test_a_finished_distribution_is_charted_over_its_own_span():
    now = timezone.now()
    distribution = SimpleNamespace(started_at=now - timedelta(days=30), scheduled_at=now,
                                   finished_at=now - timedelta(days=29, hours=23))
    assert chart_interval(distribution, now=now) == 60


def test_series_of_a_simulated_rollout_have_the_new_version_against_its_baseline(make_fleet, make_version):
    rollout = simulated_rollout(make_fleet, make_version)

    series = distribution_series(distribution=rollout.running)

    assert series["interval_seconds"] == 60
    roles = {line["role"]: line for line in series["series"]}
    assert {role: line["version"] for role, line in roles.items()} == {"new": "resnet-1.1.0",
                                                                        "baseline": "resnet-1.0.0"}
    assert len(roles["new"]["points"]) == 13 and len(roles["baseline"]["points"]) >= 40
    assert roles["new"]["points"][-1]["latency_p99_ms"] > roles["baseline"]["points"][-1]["latency_p99_ms"]
    assert [stage["started_at"] is not None for stage in series["stages"]] == [True, False]

    rolled_back = distribution_series(distribution=rollout.rolled_back)
    assert rolled_back["rolled_back_at"] == rollout.now - timedelta(minutes=25)
    assert rolled_back["rollback_reason"] == "p99 latency regression"
    assert Device.objects.filter(region="ap", slots__running_version=rollout.old).count() == 6
