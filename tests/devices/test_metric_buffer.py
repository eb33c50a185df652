"""Metric windows wait in Redis and are flushed to PostgreSQL in chunks: none lost, none stored twice."""

import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from devices import heartbeats
from devices.models import Device, MetricWindow, MetricWindowBatch
from devices.services import telemetry
from devices.services.telemetry import metric_windows_flush, metric_windows_prune
from devices.tasks import metric_windows_flush as metric_windows_flush_task
from hotswap.celery import app as celery_app
from tests.devices.checkin_helpers import checkin, device_with_credential, metric_window

pytestmark = pytest.mark.django_db


def stored_counts() -> list[int]:
    return list(MetricWindow.objects.order_by("id").values_list("inference_count", flat=True))


def buffered_checkins() -> int:
    return heartbeats.redis_client().llen(heartbeats.metric_buffer_key())


def test_a_check_in_with_windows_reads_once_writes_nothing_and_the_flush_stores_them(client,
                                                                                   django_assert_num_queries):
    device, credential = device_with_credential()
    etag = checkin(client, credential)["ETag"]

    with django_assert_num_queries(1):
        response = checkin(client, credential, {"metrics": [metric_window(count=5), metric_window(count=6)]},
                           etag=etag)

    assert response.status_code == 304
    assert MetricWindow.objects.count() == 0 and buffered_checkins() == 1
    assert metric_windows_flush_task() == 2
    assert stored_counts() == [5, 6]
    assert set(MetricWindow.objects.values_list("device", flat=True)) == {device.pk}
    assert buffered_checkins() == 0
    assert metric_windows_flush() == 0  # nothing twice


def test_the_flush_keeps_the_order_check_ins_were_answered_in_across_chunks(client, settings):
    settings.METRIC_FLUSH_CHUNK = 2
    credentials = [device_with_credential(f"cam-{i}")[1] for i in range(3)]
    for count in range(1, 8):
        checkin(client, credentials[count % 3], {"metrics": [metric_window(count=count)]})

    assert metric_windows_flush() == 7

    assert stored_counts() == [1, 2, 3, 4, 5, 6, 7]
    assert list(MetricWindowBatch.objects.order_by("id").values_list("checkins", "windows")) == [
        (2, 2), (2, 2), (2, 2), (1, 1)]


def test_a_flush_that_died_halfway_is_finished_by_the_next_without_storing_a_chunk_twice(client, settings,
                                                                                          monkeypatch):
    settings.METRIC_FLUSH_CHUNK = 2
    _device, credential = device_with_credential()
    for count in range(1, 6):
        checkin(client, credential, {"metrics": [metric_window(count=count)]})
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
    checkin(client, credential, {"metrics": [metric_window(count=6)]})  # arrives meanwhile: a fresh buffer

    assert metric_windows_flush() == 2  # the died batch's last chunk, and the new check-in

    assert sorted(stored_counts()) == [1, 2, 3, 4, 5, 6]


def test_a_full_buffer_makes_check_ins_write_their_windows_themselves(client, settings):
    settings.METRIC_BUFFER_MAX_CHECKINS = 1
    _device, credential = device_with_credential()

    checkin(client, credential, {"metrics": [metric_window(count=1)]})
    checkin(client, credential, {"metrics": [metric_window(count=2)]})

    assert stored_counts() == [2]  # the flush has fallen behind: written at once
    assert metric_windows_flush() == 1
    assert sorted(stored_counts()) == [1, 2]


def test_windows_of_a_device_deleted_before_the_flush_go_with_it_and_the_others_are_stored(client):
    gone, gone_credential = device_with_credential("cam-gone")
    _kept, kept_credential = device_with_credential("cam-kept")
    checkin(client, gone_credential, {"metrics": [metric_window(count=1)]})
    checkin(client, kept_credential, {"metrics": [metric_window(count=2)]})
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
    checkin(client, credential, {"metrics": [metric_window()]})
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


def test_windows_the_database_refuses_are_set_aside_without_holding_up_the_rest(client, caplog):
    device, credential = device_with_credential()
    checkin(client, credential, {"metrics": [metric_window(count=1)]})
    # As if a rule had changed under a buffered window: one the database's constraints refuse.
    poison = json.dumps([{**metric_window(count=2), "device": device.pk, "error_count": 5,
                          "window_start": timezone.now().isoformat(), "window_end": timezone.now().isoformat()}])
    heartbeats.redis_client().rpush(heartbeats.metric_buffer_key(), poison)
    checkin(client, credential, {"metrics": [metric_window(count=3)]})

    assert metric_windows_flush() == 2

    assert stored_counts() == [1, 3]
    assert heartbeats.redis_client().lrange(f"{heartbeats.metric_buffer_key()}:rejected", 0, -1) == [poison.encode()]
    assert "metric windows rejected by the database" in caplog.text
    assert buffered_checkins() == 0 and metric_windows_flush() == 0
