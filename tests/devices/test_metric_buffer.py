"""Metric windows wait in Redis and are flushed to PostgreSQL in chunks: none lost, none stored twice."""

import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from devices import heartbeats
from devices.models import Device, MetricWindow, MetricWindowBatch
from devices.services import telemetry
from devices.services.telemetry import metric_windows_flush, metric_windows_prune
from devices.tasks import metric_windows_flush as metric_windows_flush_task
from hotswap.celery import app as celery_app
from tests.devices.checkin_helpers import checkin, device_with_credential, metric_window, running

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _registry(make_version):
    make_version()  # what metric_window() reports on: a version of the registry


def stored_counts() -> list[int]:
    return list(MetricWindow.objects.order_by("id").values_list("inference_count", flat=True))


def as_buffered(window: dict, device: Device) -> dict:
    """A window as a check-in leaves it in the buffer: validated, flattened, naming its device."""
    latency = window.pop("latency_ms")
    return {**window, "device": device.pk, "latency_p50_ms": latency["p50"], "latency_p95_ms": latency["p95"],
            "latency_p99_ms": latency["p99"]}


def buffered_checkins() -> int:
    return heartbeats.redis_client().llen(heartbeats.metric_buffer_key())


def test_a_check_in_with_windows_reads_once_writes_nothing_and_the_flush_stores_them(client,
                                                                                   django_assert_num_queries):
    device, credential = device_with_credential()
    # The versions are known after this.
    etag = checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=4)]})["ETag"]
    assert metric_windows_flush() == 1

    with django_assert_num_queries(1):
        response = checkin(client, credential, {"models": [running()],
                                                "metrics": [metric_window(count=5), metric_window(count=6)]},
                           etag=etag)

    assert response.status_code == 304
    assert MetricWindow.objects.count() == 1 and buffered_checkins() == 1
    assert metric_windows_flush_task() == 2
    assert stored_counts() == [4, 5, 6]
    assert set(MetricWindow.objects.values_list("device", flat=True)) == {device.pk}
    assert buffered_checkins() == 0
    assert metric_windows_flush() == 0  # nothing twice


def test_the_flush_keeps_the_order_check_ins_were_answered_in_across_chunks(client, settings):
    settings.METRIC_FLUSH_CHUNK = 2
    credentials = [device_with_credential(f"cam-{i}")[1] for i in range(3)]
    for count in range(1, 8):
        checkin(client, credentials[count % 3], {"models": [running()], "metrics": [metric_window(count=count)]})

    assert metric_windows_flush() == 7

    assert stored_counts() == [1, 2, 3, 4, 5, 6, 7]
    assert list(MetricWindowBatch.objects.order_by("id").values_list("checkins", "windows")) == [
        (2, 2), (2, 2), (2, 2), (1, 1)]


def test_a_flush_that_died_halfway_is_finished_by_the_next_without_storing_a_chunk_twice(client, settings,
                                                                                          monkeypatch):
    settings.METRIC_FLUSH_CHUNK = 2
    _device, credential = device_with_credential()
    for count in range(1, 6):
        checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=count)]})
    real_flush_chunk, chunks = telemetry._flush_chunk, []

    def dies_after_the_second_chunk(receipt, arrays):
        stored = real_flush_chunk(receipt, arrays)
        chunks.append(receipt)
        if len(chunks) == 2:
            raise SystemExit("worker killed")  # after the commit, before the list left Redis
        return stored

    monkeypatch.setattr(telemetry, "_flush_chunk", dies_after_the_second_chunk)
    with pytest.raises(SystemExit):
        metric_windows_flush()
    assert stored_counts() == [1, 2, 3, 4]
    monkeypatch.setattr(telemetry, "_flush_chunk", real_flush_chunk)
    # Arrives meanwhile: a fresh buffer.
    checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=6)]})

    assert metric_windows_flush() == 2  # the died batch's last chunk, and the new check-in

    assert sorted(stored_counts()) == [1, 2, 3, 4, 5, 6]


def test_a_full_buffer_makes_check_ins_write_their_windows_themselves(client, settings):
    settings.METRIC_BUFFER_MAX_CHECKINS = 1
    _device, credential = device_with_credential()

    checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=1)]})
    checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=2)]})

    assert stored_counts() == [2]  # the flush has fallen behind: written at once
    assert metric_windows_flush() == 1
    assert sorted(stored_counts()) == [1, 2]


def test_windows_of_a_device_deleted_before_the_flush_go_with_it_and_the_others_are_stored(client):
    gone, gone_credential = device_with_credential("cam-gone")
    _kept, kept_credential = device_with_credential("cam-kept")
    checkin(client, gone_credential, {"models": [running()], "metrics": [metric_window(count=1)]})
    checkin(client, kept_credential, {"models": [running()], "metrics": [metric_window(count=2)]})
    Device.objects.filter(pk=gone.pk).delete()

    assert metric_windows_flush() == 1

    assert stored_counts() == [2]
    assert buffered_checkins() == 0


def test_check_ins_without_windows_buffer_nothing(client):
    _device, credential = device_with_credential()

    checkin(client, credential, {"health": {"cpu_percent": 5}})
    checkin(client, credential, {"metrics": []})

    assert buffered_checkins() == 0 and metric_windows_flush() == 0


def test_receipts_are_pruned_with_the_raw_windows(client, settings):
    _device, credential = device_with_credential()
    checkin(client, credential, {"models": [running()], "metrics": [metric_window()]})
    metric_windows_flush()
    now = timezone.now()

    metric_windows_prune(now=now + timedelta(days=settings.METRIC_RETENTION_DAYS - 1))
    assert MetricWindowBatch.objects.count() == 1
    metric_windows_prune(now=now + timedelta(days=settings.METRIC_RETENTION_DAYS + 1))
    assert MetricWindowBatch.objects.count() == 0


def test_celery_beat_flushes_every_few_seconds_and_drops_runs_the_worker_could_not_start():
    # What `celery beat` makes of the settings' entry at start (django-celery-beat's database scheduler).
    name = "flush-metric-windows"
    DatabaseScheduler.Entry.from_entry(name, app=celery_app, **django_settings.CELERY_BEAT_SCHEDULE[name])

    entry = DatabaseScheduler.Entry(PeriodicTask.objects.get(name=name), app=celery_app)
    assert entry.task == "devices.tasks.metric_windows_flush"
    assert entry.schedule.run_every <= timedelta(seconds=5)
    assert entry.options["expires"] >= entry.schedule.run_every.total_seconds()


def test_windows_the_database_refuses_are_set_aside_without_holding_up_the_rest(client, caplog, monkeypatch):
    monkeypatch.setattr(heartbeats, "SET_ASIDE_MAX", 3)
    redis = heartbeats.redis_client()
    set_aside_key = heartbeats.set_aside_key("metric-windows")
    redis.delete(set_aside_key)
    counted = heartbeats.set_aside_counts().get("metric-windows", 0)
    device, credential = device_with_credential()
    other, other_credential = device_with_credential("cam-other")
    checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=1)]})

    def buffered(*windows: dict, device: Device = device) -> str:  # as a check-in buffers its windows
        entry = json.dumps([as_buffered(window, device) for window in windows])
        redis.rpush(heartbeats.metric_buffer_key(), entry)
        return entry

    # What check-ins buffered before the edge refused such input, or a rule changed under a buffered window.
    now = timezone.now().isoformat()
    poison = [metric_window("a\u0000b", count=90), metric_window("\udc80x", count=91),
              {**metric_window(count=92, errors=95), "window_start": now, "window_end": now}]
    buffered(metric_window(count=2), poison[0], metric_window(count=3))  # the good ones of its check-in too
    buffered(poison[1], device=other)
    checkin(client, other_credential, {"models": [running()], "metrics": [metric_window(count=4)]})
    buffered(poison[2])
    redis.rpush(heartbeats.metric_buffer_key(), b"not json")
    checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=5)]})

    assert metric_windows_flush() == 5

    assert stored_counts() == [1, 2, 3, 4, 5]
    kept = redis.lrange(set_aside_key, 0, -1)
    assert len(kept) == 3  # capped: the newest
    assert [json.loads(entry)[0]["inference_count"] for entry in kept[:2]] == [91, 92] and kept[2] == b"not json"
    assert 0 < redis.ttl(set_aside_key) <= heartbeats.SET_ASIDE_TTL.total_seconds()
    assert heartbeats.set_aside_counts()["metric-windows"] == counted + 4
    assert "refused by the database, set aside" in caplog.text
    assert buffered_checkins() == 0 and metric_windows_flush() == 0


def test_windows_set_aside_are_counted_in_metrics(client, settings):
    settings.METRICS_CACHE_SECONDS = 0
    device, _credential = device_with_credential()
    redis = heartbeats.redis_client()
    counted = heartbeats.set_aside_counts().get("metric-windows", 0)
    redis.rpush(heartbeats.metric_buffer_key(), json.dumps([as_buffered(metric_window("a\u0000b"), device)]))

    metric_windows_flush()

    text = Client().get("/metrics").content.decode()
    assert f"hotswap_metric_windows_set_aside_total {counted + 1}.0" in text


def test_windows_an_earlier_flush_rejected_without_bound_join_the_capped_expiring_set_aside(monkeypatch):
    monkeypatch.setattr(heartbeats, "SET_ASIDE_MAX", 2)
    redis = heartbeats.redis_client()
    redis.delete(heartbeats.set_aside_key("metric-windows"))
    legacy = f"{heartbeats.metric_buffer_key()}:rejected"
    redis.rpush(legacy, b"[1]", b"[2]", b"[3]")

    metric_windows_flush()

    assert not redis.exists(legacy)
    assert redis.lrange(heartbeats.set_aside_key("metric-windows"), 0, -1) == [b"[2]", b"[3]"]
    assert redis.ttl(heartbeats.set_aside_key("metric-windows")) > 0


def test_an_unreachable_database_sets_nothing_aside_and_the_windows_wait_for_the_next_flush(client, monkeypatch):
    _device, credential = device_with_credential()
    checkin(client, credential, {"models": [running()], "metrics": [metric_window(count=1)]})
    counted = heartbeats.set_aside_counts().get("metric-windows", 0)

    def unreachable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(telemetry, "reports_insert", unreachable)
    with pytest.raises(OperationalError):
        metric_windows_flush()
    monkeypatch.undo()

    assert heartbeats.set_aside_counts().get("metric-windows", 0) == counted
    assert metric_windows_flush() == 1 and stored_counts() == [1]
