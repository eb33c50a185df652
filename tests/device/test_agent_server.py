"""The reference agent against the real application in-process (httpx's WSGI transport): fast protocol checks."""

from __future__ import annotations

import math
from datetime import timedelta

import httpx
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone

from devices.models import Device, MetricWindow
from devices.services.desired_state import desired_state_set
from devices.services.enrollment import enrollment_key_create
from devices.services.registry import device_decommission
from devices.services.telemetry import metric_windows_flush
from hotswap.handlers import HotSwapApplication
from hotswap_device import Agent

pytestmark = pytest.mark.django_db


@pytest.fixture
def transport():
    # As Django's test client does: the test's transaction must outlive the requests' connection recycling.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield httpx.WSGITransport(app=HotSwapApplication(WSGIHandler()))
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def test_a_decommissioned_device_s_agent_stops_instead_of_re_enrolling(transport, tmp_path):
    _key, raw = enrollment_key_create(name="fleet", created_by=None)
    agent = Agent("http://testserver", tmp_path / "agent", enroll_key=raw, device_id="cam-1", transport=transport)
    try:
        assert agent.run_once().status == "ok"
        device_decommission(device=Device.objects.get(device_id="cam-1"), actor=None)

        result = agent.run_once()

        assert result.status == "decommissioned" and "DEVICE_DECOMMISSIONED" in result.error
        assert Device.objects.get().status == Device.Status.DECOMMISSIONED  # still the one device, not re-enrolled
    finally:
        agent.close()


def test_a_window_holding_nan_is_dropped_alone_and_the_others_are_stored(transport, tmp_path, make_version):
    resnet = make_version("resnet", "1.0.0")
    _key, raw = enrollment_key_create(name="fleet", created_by=None)
    agent = Agent("http://testserver", tmp_path / "agent", enroll_key=raw, device_id="cam-1", transport=transport,
                  download_attempts=1)
    try:
        agent.run_once()
        # Windows are accepted for the device's model slots only: resnet gets one (its artifact is not stored,
        # so the agent's download of it is merely deferred).
        desired_state_set(devices=Device.objects.filter(device_id="cam-1"), version=resnet)
        end = timezone.now() - timedelta(seconds=5)
        window = {"model": "resnet", "version": "1.0.0", "window_start": (end - timedelta(minutes=1)).isoformat(),
                  "window_end": end.isoformat(), "inference_count": 10, "error_count": 0,
                  "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}}
        # Distinct windows: a window is stored once per (device, version, window_start).
        agent.state.pending_metrics = [
            {**window, "inference_count": n, "window_start": (end - timedelta(minutes=1, seconds=n)).isoformat()}
            for n in (1, 2, 3, 4)]
        agent.state.pending_metrics[2]["latency_ms"] = {"p50": math.nan, "p95": 2.0, "p99": 3.0}

        result = agent.run_once()

        assert result.dropped == ["metrics[2]"] and result.sent_metrics == 3
        assert agent.state.pending_metrics == []
        metric_windows_flush()
        assert sorted(MetricWindow.objects.values_list("inference_count", flat=True)) == [1, 2, 4]
    finally:
        agent.close()
