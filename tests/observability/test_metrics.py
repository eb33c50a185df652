"""GET /metrics: django-prometheus's metrics and the domain metrics, aggregated from what the database holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from devices.heartbeats import devices_mark_offline
from devices.models import Device, InstallReport, MetricWindow, ModelSlot
from devices.services.telemetry import metric_rollup_recent
from models_app.models import ValidationReport
from rollouts.models import Distribution
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create, distribution_rollback
from tests.artifacts import onnx_model_bytes
from tests.models_app.conftest import upload
from tests.rollouts.conftest import offered

pytestmark = pytest.mark.django_db


def labels(**pairs) -> frozenset:
    return frozenset(pairs.items())


def _window(device: Device, version, *, end, histogram: list[int], p50: float) -> MetricWindow:
    count = sum(histogram)
    return MetricWindow.objects.create(
        device=device, version=version, model_name=version.ai_model.name, model_version=version.version,
        window_start=end - timedelta(minutes=1), window_end=end, inference_count=count, error_count=2,
        latency_p50_ms=p50, latency_p95_ms=p50 * 2, latency_p99_ms=p50 * 3, latency_histogram=histogram)


def test_each_model_of_a_device_counts_in_its_own_running_gauge_and_the_device_once_online(make_version,
                                                                                           make_device, scrape):
    detector, detector_next, recogniser = (make_version("detector", "1.0.0"), make_version("detector", "1.1.0"),
                                           make_version("recogniser", "2.0.0"))
    for index, (status, running) in enumerate([("active", (detector, recogniser)), ("active", (detector_next,
                                               recogniser)), ("active", ()), ("offline", (detector,))]):
        device = make_device(device_id=f"multi-{index}", region="eu-north", status=status)
        for version in running:
            ModelSlot.objects.create(device=device, ai_model=version.ai_model, running_version=version,
                                     reported_version=version.version)

    values, _text = scrape()

    assert values["hotswap_devices_online", labels(region="eu-north")] == 3
    assert values["hotswap_devices_offline", labels(region="eu-north")] == 1
    assert values["hotswap_devices_running", labels(model="detector", version="1.0.0")] == 1  # one is offline
    assert values["hotswap_devices_running", labels(model="detector", version="1.1.0")] == 1
    assert values["hotswap_devices_running", labels(model="recogniser", version="2.0.0")] == 2
    assert values["hotswap_model_versions_active", labels(model="detector")] == 2
    assert values["hotswap_model_versions_active", labels(model="recogniser")] == 1


def test_it_reports_the_domain_metrics_from_the_database(make_version, make_fleet, scrape):
    now = timezone.now()
    old, new = make_version(version="1.0.0"), make_version(version="1.1.0")
    yolo_old, yolo_new = make_version(name="yolo", version="2.0.0"), make_version(name="yolo", version="2.1.0")
    make_version(name="yolo", version="3.0.0", status="deprecated")
    ValidationReport.objects.create(version=new, status="passed", started_at=now - timedelta(seconds=12),
                                    finished_at=now)
    ValidationReport.objects.create(version=yolo_new, status="failed", started_at=now - timedelta(seconds=45),
                                    finished_at=now)
    ValidationReport.objects.create(version=old, status="running", started_at=now)  # not finished: not counted

    eu = make_fleet({"eu-west": 3}, running=old)
    us = make_fleet({"us-east": 2}, running=yolo_old)
    # A direct distribution of resnet 1.1.0 that completes two minutes after it started.
    completed = distribution_create(version=new, strategy="direct", config={"soak": "PT0S"},
                                    target={"regions": ["eu-west"]}, now=now)
    distribution_advance(distribution_id=completed.pk, now=now)
    InstallReport.objects.bulk_create([
        InstallReport(device_id=a.device_id, version=new, model_name="resnet", model_version="1.1.0",
                      status="active", sequence=a.sequence, duration_ms=ms, reported_at=now)
        for a, ms in zip(offered(completed), (800, 1840, 7000), strict=True)
    ])
    distribution_advance(distribution_id=completed.pk, now=now + timedelta(minutes=2))
    ModelSlot.objects.filter(device__in=eu, ai_model=new.ai_model).update(running_version=new)
    # A canary of yolo 2.1.0, rolled back after ten minutes.
    rolled_back = distribution_create(version=yolo_new, strategy="canary", target={"regions": ["us-east"]},
                                      now=now)
    distribution_advance(distribution_id=rolled_back.pk, now=now)
    rolled_back.refresh_from_db()
    distribution_rollback(distribution=rolled_back, now=now + timedelta(minutes=10))
    # One that has not started yet, and one install report of a device already running the version (no update).
    distribution_create(version=yolo_old, strategy="direct", target={"device_ids": [eu[0].device_id]},
                        scheduled_at=now + timedelta(hours=1), now=now)
    InstallReport.objects.create(device=us[0], version=yolo_old, model_name="yolo", model_version="2.0.0",
                                 status="active", duration_ms=0, reported_at=now)
    # Telemetry: two devices' windows of resnet 1.1.0, rolled up.
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    _window(eu[0], new, end=end, histogram=[0, 0, 10, 80, 10, 0, 0, 0, 0, 0, 0, 0, 0], p50=4.0)
    _window(eu[1], new, end=end, histogram=[0, 0, 0, 50, 40, 9, 1, 0, 0, 0, 0, 0, 0], p50=10.0)
    metric_rollup_recent(now=timezone.now() + timedelta(seconds=1))
    # us-east goes silent.
    Device.objects.filter(pk__in=[d.pk for d in us]).update(last_seen=now - timedelta(hours=1))
    devices_mark_offline(now=now)

    values, text = scrape()

    assert values["hotswap_models_uploaded_total", labels(model="resnet")] == 2
    assert values["hotswap_models_uploaded_total", labels(model="yolo")] == 3
    assert values["hotswap_model_versions", labels(model="yolo", status="deprecated")] == 1
    assert values["hotswap_model_versions", labels(model="resnet", status="passed")] == 2

    assert values["hotswap_model_validation_duration_seconds_count", labels(outcome="passed")] == 1
    assert values["hotswap_model_validation_duration_seconds_sum", labels(outcome="passed")] == pytest.approx(12)
    assert values["hotswap_model_validation_duration_seconds_bucket", labels(outcome="failed", le="30.0")] == 0
    assert values["hotswap_model_validation_duration_seconds_bucket", labels(outcome="failed", le="60.0")] == 1
    assert ("hotswap_model_validation_duration_seconds_count", labels(outcome="running")) not in values

    assert values["hotswap_distributions_created_total", labels(strategy="direct")] == 2
    assert values["hotswap_distributions_created_total", labels(strategy="canary")] == 1
    assert values["hotswap_distributions_succeeded_total", labels(strategy="direct")] == 1
    assert values["hotswap_distributions_failed_total", labels(strategy="canary", outcome="rolled_back")] == 1
    assert values["hotswap_distributions_active", labels(strategy="direct", status="scheduled")] == 1
    assert ("hotswap_distributions_active", labels(strategy="canary", status="running")) not in values
    assert values["hotswap_distribution_duration_seconds_sum",
                  labels(strategy="direct", outcome="completed")] == pytest.approx(120)
    assert values["hotswap_distribution_duration_seconds_sum",
                  labels(strategy="canary", outcome="rolled_back")] == pytest.approx(600)
    assert values["hotswap_distribution_duration_seconds_bucket",
                  labels(strategy="canary", outcome="rolled_back", le="300.0")] == 0
    assert values["hotswap_distribution_duration_seconds_bucket",
                  labels(strategy="canary", outcome="rolled_back", le="900.0")] == 1

    assert values["hotswap_devices_online", labels(region="eu-west")] == 3
    assert values["hotswap_devices_offline", labels(region="us-east")] == 2
    assert ("hotswap_devices_online", labels(region="us-east")) not in values
    assert values["hotswap_devices_running", labels(model="resnet", version="1.1.0")] == 3
    assert values["hotswap_model_versions_active", labels(model="resnet")] == 1
    assert ("hotswap_model_versions_active", labels(model="yolo")) not in values  # its devices are offline

    resnet_new = labels(model="resnet", version="1.1.0")
    assert values["hotswap_devices_updated_total", resnet_new] == 3
    assert ("hotswap_devices_updated_total", labels(model="yolo", version="2.0.0")) in values
    assert values["hotswap_devices_updated_total", labels(model="yolo", version="2.0.0")] == 0
    assert values["hotswap_model_swap_duration_seconds_count", resnet_new] == 3
    assert values["hotswap_model_swap_duration_seconds_sum", resnet_new] == pytest.approx(9.64)
    assert values["hotswap_model_swap_duration_seconds_bucket", resnet_new | {("le", "1.0")}] == 1
    assert values["hotswap_model_swap_duration_seconds_bucket", resnet_new | {("le", "2.5")}] == 2
    assert values["hotswap_model_swap_duration_seconds_bucket", resnet_new | {("le", "5.0")}] == 2
    assert values["hotswap_model_swap_duration_seconds_bucket", resnet_new | {("le", "10.0")}] == 3

    assert values["hotswap_inferences_total", resnet_new] == 200
    assert values["hotswap_inference_errors_total", resnet_new] == 4
    assert values["hotswap_inference_latency_seconds_count", resnet_new] == 200
    assert values["hotswap_inference_latency_seconds_bucket", resnet_new | {("le", "0.005")}] == 10
    assert values["hotswap_inference_latency_seconds_bucket", resnet_new | {("le", "0.01")}] == 140
    assert values["hotswap_inference_latency_seconds_bucket", resnet_new | {("le", "0.02")}] == 190
    assert values["hotswap_inference_latency_seconds_bucket", resnet_new | {("le", "0.1")}] == 200
    assert values["hotswap_inference_latency_seconds_sum", resnet_new] == pytest.approx((100 * 4 + 100 * 10) / 1000)

    assert values["hotswap_domain_metrics_up", frozenset()] == 1
    assert "# TYPE hotswap_devices_updated_total counter" in text
    assert "# TYPE hotswap_inference_latency_seconds histogram" in text


def test_it_keeps_device_ids_out_of_labels_and_few_regions(make_version, make_fleet, scrape, settings):
    settings.METRICS_MAX_REGIONS = 2
    version = make_version()
    devices = make_fleet({"eu-west": 3, "us-east": 2, "ap-south": 1, "sa-east": 1}, running=version)
    InstallReport.objects.bulk_create([
        InstallReport(device=d, version=version, model_name="resnet", model_version="1.0.0", status="active",
                      duration_ms=1000, reported_at=timezone.now()) for d in devices])

    values, text = scrape()

    device_ids = {d.device_id for d in devices}
    label_values = {value for (_, pairs) in values for _, value in pairs}
    assert not device_ids & label_values
    assert not any(device_id in text for device_id in device_ids)
    label_names = {name for (sample, pairs) in values if sample.startswith("hotswap_") for name, _ in pairs}
    assert label_names <= {"model", "version", "status", "strategy", "outcome", "region", "le"}
    assert values["hotswap_devices_online", labels(region="eu-west")] == 3
    assert values["hotswap_devices_online", labels(region="us-east")] == 2
    assert values["hotswap_devices_online", labels(region="other")] == 2


def test_it_times_uploads_and_counts_them(client_for, scrape):
    before, _ = scrape()
    response = upload(client_for("ModelDeveloper"), onnx_model_bytes(), name="mobilenet", version="1.0.0")
    assert response.status_code == 202, response.content

    values, _ = scrape()

    key = ("hotswap_model_upload_duration_seconds_count", labels(outcome="created"))
    assert values[key] == before.get(key, 0) + 1
    assert values["hotswap_model_upload_duration_seconds_sum", labels(outcome="created")] > 0
    assert values["hotswap_models_uploaded_total", labels(model="mobilenet")] == 1


def test_it_serves_django_prometheus_metrics_too(scrape):
    Client().get("/health")
    values, text = scrape()
    assert "django_http_requests_total_by_method_total" in text
    assert values["hotswap_domain_metrics_up", frozenset()] == 1


def test_it_shares_one_aggregation_through_the_cache(make_version, settings):
    settings.METRICS_CACHE_SECONDS = 60
    make_version()
    first = Client().get("/metrics").content.decode()
    make_version(version="2.0.0")
    assert 'hotswap_models_uploaded_total{model="resnet"} 1.0' in first
    assert 'hotswap_models_uploaded_total{model="resnet"} 1.0' in Client().get("/metrics").content.decode()
    settings.METRICS_CACHE_SECONDS = 0
    assert 'hotswap_models_uploaded_total{model="resnet"} 2.0' in Client().get("/metrics").content.decode()


def test_it_still_answers_when_the_database_query_fails(monkeypatch, scrape):
    from django.db import DatabaseError

    from hotswap.observability import metrics

    def broken(self):
        raise DatabaseError("relation does not exist")

    monkeypatch.setattr(metrics.DomainCollector, "_families", broken)
    values, text = scrape()
    assert values["hotswap_domain_metrics_up", frozenset()] == 0
    assert "django_http_requests" in text


def test_an_empty_installation_has_the_families_without_samples(scrape):
    _values, text = scrape()
    for name in ("hotswap_models_uploaded_total", "hotswap_distributions_created_total",
                 "hotswap_distributions_succeeded_total", "hotswap_distributions_failed_total",
                 "hotswap_devices_updated_total", "hotswap_devices_online", "hotswap_devices_offline",
                 "hotswap_model_versions_active", "hotswap_distributions_active",
                 "hotswap_model_swap_duration_seconds", "hotswap_inference_latency_seconds",
                 "hotswap_model_validation_duration_seconds", "hotswap_distribution_duration_seconds"):
        assert f"# HELP {name}" in text
    assert not Distribution.objects.exists()


def collect(now=None) -> dict:
    from prometheus_client import generate_latest

    from hotswap.observability.metrics import DomainCollector
    from tests.observability.conftest import samples

    return samples(generate_latest(DomainCollector(now=now)).decode())


def _active(device: Device, version, duration_ms: int) -> InstallReport:
    return InstallReport.objects.create(device=device, version=version, model_name=version.ai_model.name,
                                        model_version=version.version, status="active", duration_ms=duration_ms,
                                        reported_at=timezone.now())


def test_settled_install_reports_are_kept_so_scrapes_only_read_new_rows(make_version, make_fleet):
    version = make_version()
    first, second, third = make_fleet({"eu-west": 3})
    _active(first, version, 1000)
    _active(second, version, 2000)
    later = timezone.now() + timedelta(minutes=5)
    key = ("hotswap_model_swap_duration_seconds_sum", labels(model="resnet", version="1.0.0"))
    assert collect(later)[key] == pytest.approx(3.0)  # settles both

    _active(third, version, 4000)  # not settled yet: read from the table on every scrape
    assert collect()[key] == pytest.approx(7.0)
    second.delete()  # its reports go with it, yet a counter never goes down
    values = collect(later + timedelta(minutes=5))
    assert values[key] == pytest.approx(7.0)
    assert values["hotswap_devices_updated_total", labels(model="resnet", version="1.0.0")] == 3

    from django.core.cache import cache

    cache.clear()  # a lost cache costs one full aggregation of what the table holds
    assert collect()[key] == pytest.approx(5.0)


def test_settled_state_of_another_database_is_dropped(make_version, make_fleet):
    from django.core.cache import cache

    from hotswap.observability.metrics import _Settled

    version = make_version()
    (device,) = make_fleet({"eu-west": 1})
    _active(device, version, 1000)
    _Settled("installs").store(10**9, {version.pk: [50, 50, 50.0] + [50] * 12})
    key = ("hotswap_devices_updated_total", labels(model="resnet", version="1.0.0"))
    assert collect(timezone.now() + timedelta(minutes=5))[key] == 1
    assert cache.get(_Settled("installs").key)[0] < 10**9


def test_settled_rollup_minutes_are_kept_and_new_minutes_add_up(make_version, make_fleet):
    version = make_version()
    (device,) = make_fleet({"eu-west": 1})
    now = timezone.now()
    old_minute = now.replace(second=0, microsecond=0) - timedelta(minutes=30)
    _window(device, version, end=old_minute, histogram=[0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0], p50=8.0)
    metric_rollup_recent(now=timezone.now() + timedelta(seconds=1))
    key = ("hotswap_inferences_total", labels(model="resnet", version="1.0.0"))
    assert collect(now)[key] == 100  # the old minute settles

    _window(device, version, end=now.replace(second=0, microsecond=0),
            histogram=[0, 0, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 0], p50=15.0)
    metric_rollup_recent(now=timezone.now() + timedelta(seconds=1))
    values = collect(now)
    assert values[key] == 150
    assert values["hotswap_inference_latency_seconds_bucket",
                  labels(model="resnet", version="1.0.0", le="0.01")] == 100
    assert values["hotswap_inference_latency_seconds_bucket",
                  labels(model="resnet", version="1.0.0", le="0.02")] == 150


def test_it_still_answers_from_the_database_when_redis_is_down(make_version, settings):
    from hotswap.lib.localservices import free_port

    make_version()
    settings.METRICS_CACHE_SECONDS = 10
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}

    response = Client().get("/metrics")

    assert response.status_code == 200
    assert 'hotswap_models_uploaded_total{model="resnet"} 1.0' in response.content.decode()
    assert "hotswap_domain_metrics_up 1.0" in response.content.decode()


def test_it_shows_how_many_check_ins_wait_in_the_metric_window_buffer(client, scrape, make_version):
    from devices.services.telemetry import metric_windows_flush
    from tests.devices.checkin_helpers import checkin, device_with_credential, metric_window, running

    make_version()  # what the windows report on
    _device, credential = device_with_credential()
    for _ in range(3):
        checkin(client, credential, {"models": [running()], "metrics": [metric_window()]})

    values, _text = scrape()
    assert (values["hotswap_metric_windows_buffered", frozenset()],
            values["hotswap_metric_windows_rejected", frozenset()]) == (3, 0)
    metric_windows_flush()
    values, _text = scrape()
    assert values["hotswap_metric_windows_buffered", frozenset()] == 0
