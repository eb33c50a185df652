"""Telemetry rollup: per-minute sums by version/region/type that answer fleet-wide questions, and pruning."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import MetricRollup, MetricWindow
from devices.services.telemetry import metric_rollup_recent, metric_windows_prune
from devices.tasks import metric_rollup
from devices.tasks import metric_windows_prune as prune_task
from devices.telemetry_selectors import histogram_percentile, version_metrics
from tests.devices.checkin_helpers import device_with_credential, registry_version

pytestmark = pytest.mark.django_db


def window(device, version, *, end, count, errors=0, p50=2.0, p95=4.0, p99=8.0, histogram=None, accuracy=None,
           labelled=None):
    return MetricWindow.objects.create(
        device=device, version=version, model_name="resnet", model_version=version.version,
        window_start=end - timedelta(minutes=1), window_end=end, inference_count=count, error_count=errors,
        latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99, latency_histogram=histogram,
        accuracy=accuracy, labelled_count=labelled,
    )


@pytest.fixture
def fleet():
    version, _ = registry_version()
    eu, _ = device_with_credential("eu-1", region="eu-west")
    eu2, _ = device_with_credential("eu-2", region="eu-west")
    us, _ = device_with_credential("us-1", region="us-east")
    return version, eu, eu2, us


def test_it_rolls_up_windows_into_weighted_fleet_figures(fleet):
    version, eu, eu2, us = fleet
    end = timezone.now().replace(second=30, microsecond=0) - timedelta(minutes=2)
    window(eu, version, end=end, count=100, errors=1, p99=10, histogram=[0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0],
           accuracy=0.9, labelled=10)
    window(eu2, version, end=end, count=300, errors=3, p99=20, histogram=[0, 0, 0, 0, 300, 0, 0, 0, 0, 0, 0, 0, 0],
           accuracy=0.5, labelled=30)
    window(us, version, end=end, count=600, errors=60, p99=40)

    metric_rollup_recent()
    since, until = end - timedelta(minutes=5), end + timedelta(minutes=5)
    (overall,) = version_metrics(version_ids=[version.pk], since=since, until=until)
    by_region = {row["group"]: row for row in version_metrics(version_ids=[version.pk], since=since, until=until,
                                                              group_by="region")}

    assert overall["inference_count"] == 1000 and overall["error_count"] == 64
    assert overall["error_rate"] == pytest.approx(0.064)
    assert overall["latency_p99_ms"] == pytest.approx((100 * 10 + 300 * 20 + 600 * 40) / 1000)
    assert overall["latency_p99_max_ms"] == 40
    assert overall["accuracy"] == pytest.approx((0.9 * 10 + 0.5 * 30) / 40)
    assert by_region["eu-west"]["inference_count"] == 400 and by_region["us-east"]["error_rate"] == 0.1
    assert by_region["eu-west"]["histogram_p99_ms"] == 20.0  # merged: 100 in (5,10], 300 in (10,20]
    assert MetricRollup.objects.get(region="eu-west").device_count == 2


def test_it_is_idempotent_and_catches_late_windows(fleet):
    version, eu, _eu2, _us = fleet
    end = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=1)
    window(eu, version, end=end, count=100)
    assert metric_rollup() >= 1
    first = list(MetricRollup.objects.values_list("inference_count", flat=True))

    metric_rollup()  # runs twice, same result
    assert list(MetricRollup.objects.values_list("inference_count", flat=True)) == first

    window(eu, version, end=end - timedelta(hours=3), count=7)  # a device catching up on its backlog
    metric_rollup()
    assert MetricRollup.objects.filter(bucket_start=(end - timedelta(hours=3)).replace(second=0)).get(
    ).inference_count == 7


def test_it_slices_a_time_series(fleet):
    version, eu, _eu2, _us = fleet
    base = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for minute in range(10):
        window(eu, version, end=base + timedelta(minutes=minute, seconds=30), count=10 * (minute + 1))
    metric_rollup_recent()

    series = version_metrics(version_ids=[version.pk], since=base, until=base + timedelta(minutes=10),
                             interval_seconds=300)

    assert [row["inference_count"] for row in series] == [150, 400]


def test_it_prunes_old_raw_windows_but_keeps_rollups(fleet, settings):
    settings.METRIC_RETENTION_DAYS = 7
    version, eu, _eu2, _us = fleet
    old = window(eu, version, end=timezone.now() - timedelta(days=6), count=5)
    fresh = window(eu, version, end=timezone.now() - timedelta(minutes=5), count=5)
    metric_rollup_recent()

    assert metric_windows_prune(now=timezone.now() + timedelta(days=2)) == 1
    assert prune_task() == 0
    assert list(MetricWindow.objects.all()) == [fresh]
    assert not MetricWindow.objects.filter(pk=old.pk).exists()
    assert MetricRollup.objects.count() == 2


def test_histogram_percentiles():
    assert histogram_percentile([0] * 13, 0.99) is None
    assert histogram_percentile([50, 50] + [0] * 11, 0.5) == 1.0
    assert histogram_percentile([0] * 12 + [5], 0.99) == 5000.0
