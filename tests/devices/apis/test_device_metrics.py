"""GET /api/v1/devices/<device_id>/metrics: health, running and desired, installs, recent metric windows."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import InstallReport, MetricWindow

pytestmark = pytest.mark.django_db


def window(device, end, version=None, **fields):
    return MetricWindow.objects.create(
        device=device, version=version, model_name="resnet", model_version="1.0.0", window_start=end - timedelta(
            minutes=1), window_end=end, inference_count=600, error_count=2, latency_p50_ms=3.0, latency_p95_ms=5.0,
        latency_p99_ms=7.5, **fields)


def install(device, at, status="active", version=None):
    return InstallReport.objects.create(device=device, version=version, model_name="resnet", model_version="1.0.0",
                                        status=status, sequence=1, duration_ms=1500, reported_at=at)


def test_it_shows_health_slots_installs_and_recent_windows(client_for, make_device, make_version, make_slot):
    now = timezone.now()
    v1, v2 = make_version("resnet", "1.0.0"), make_version("resnet", "2.0.0")
    device = make_device(device_id="cam-1", cpu_percent=12.5, memory_percent=40.0, disk_percent=70.0, last_seen=now)
    make_slot(device, running=v1, desired=v2, sequence=4, set_at=now, source="manual", reported_at=now)
    for minutes in range(25):
        install(device, now - timedelta(minutes=minutes), version=v1)
    recent = window(device, now - timedelta(minutes=5), version=v1, accuracy=0.93, labelled_count=50,
                    latency_histogram=[0, 0, 12, 500, 80, 8, 0, 0, 0, 0, 0, 0, 0])
    window(device, now - timedelta(hours=2))

    body = client_for("Viewer").get("/api/v1/devices/cam-1/metrics").json()

    assert body["device_id"] == "cam-1"
    assert body["health"] == {"cpu_percent": 12.5, "memory_percent": 40.0, "disk_percent": 70.0, "status": "active",
                              "online": True, "last_seen": body["health"]["last_seen"]}
    assert body["health"]["last_seen"] is not None
    [slot] = body["slots"]
    assert (slot["model"], slot["state"], slot["sequence"]) == ("resnet", "installing", 4)
    assert slot["running"]["model_id"] == "resnet-1.0.0" and slot["running"]["sha256"] == v1.sha256
    assert slot["desired"]["version"] == "resnet-2.0.0" and slot["desired"]["action"] == "install"
    assert slot["desired"]["source"] == "manual" and slot["desired"]["rollback"] is False
    assert len(body["installs"]) == 20
    assert body["installs"][0]["model_id"] == "resnet-1.0.0" and body["installs"][0]["status"] == "active"
    assert [m["window_end"] for m in body["metrics"]] == [recent.window_end.isoformat().replace("+00:00", "Z")]
    metric = body["metrics"][0]
    assert metric["latency_ms"] == {"p50": 3.0, "p95": 5.0, "p99": 7.5}
    assert (metric["inference_count"], metric["error_count"], metric["accuracy"]) == (600, 2, 0.93)
    assert metric["latency_histogram"][3] == 500


def test_it_takes_windows_since_a_given_time_up_to_500(client_for, make_device):
    now = timezone.now()
    device = make_device(device_id="cam-1")
    MetricWindow.objects.bulk_create([
        MetricWindow(device=device, model_name="m", model_version="1.0.0", window_start=now - timedelta(minutes=i + 1),
                     window_end=now - timedelta(minutes=i), inference_count=1, error_count=0, latency_p50_ms=1,
                     latency_p95_ms=1, latency_p99_ms=1)
        for i in range(600)
    ])
    client = client_for("Viewer")
    since = (now - timedelta(minutes=9, seconds=30)).isoformat().replace("+00:00", "Z")

    assert len(client.get("/api/v1/devices/cam-1/metrics", {"since": since}).json()["metrics"]) == 10
    assert len(client.get("/api/v1/devices/cam-1/metrics", {"since": "2000-01-01T00:00:00Z"}).json()["metrics"]) == 500


def test_it_shows_a_new_device_with_nothing_yet(client_for, make_device):
    make_device(device_id="cam-1")

    body = client_for("Viewer").get("/api/v1/devices/cam-1/metrics").json()

    assert body["slots"] == [] and body["installs"] == [] and body["metrics"] == []


def test_it_refuses_a_bad_since_and_an_unknown_device(client_for, make_device):
    make_device(device_id="cam-1")
    client = client_for("Viewer")

    bad = client.get("/api/v1/devices/cam-1/metrics?since=yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["field"] == "since"
    assert client.get("/api/v1/devices/nope/metrics").json()["error"]["code"] == "DEVICE_NOT_FOUND"
