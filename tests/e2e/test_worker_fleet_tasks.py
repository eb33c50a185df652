"""A real Celery worker with beat flushes heartbeats and metric windows and rolls up telemetry on its own schedule."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, MetricRollup, MetricWindow, ModelSlot
from tests.devices.checkin_helpers import checkin, device_with_credential, metric_window, registry_version, running
from tests.live import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def wait_for(condition, timeout: float = 45.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_beat_and_worker_flush_heartbeats_and_roll_up_metrics(client):
    device, credential = device_with_credential()
    registry_version()
    end = timezone.now() - timedelta(seconds=5)
    response = checkin(client, credential, {"models": [running("resnet", "1.0.0")],
                                            "metrics": [metric_window(end=end)]})
    assert response.status_code == 200, response.content
    assert Device.objects.get(pk=device.pk).last_seen is None
    assert not MetricWindow.objects.exists()  # buffered in Redis

    with celery_worker(beat=True, env={"HEARTBEAT_FLUSH_SECONDS": "2", "METRIC_ROLLUP_SECONDS": "3"}) as (
            _process, log):
        flushed = wait_for(lambda: Device.objects.get(pk=device.pk).last_seen is not None)
        windows_flushed = wait_for(lambda: MetricWindow.objects.filter(device=device).count() == 1)
        rolled_up = wait_for(lambda: MetricRollup.objects.exists(), timeout=90)
        worker_log = log.read_text()

    assert flushed, worker_log[-3000:]
    assert windows_flushed, worker_log[-3000:]
    assert rolled_up, worker_log[-3000:]
    slot = ModelSlot.objects.get(device=device)
    assert (slot.ai_model.name, slot.reported_version) == ("resnet", "1.0.0")
    assert MetricRollup.objects.get().inference_count == 600
