"""The agent against the real server (gunicorn, PostgreSQL, Redis, S3 storage) over real HTTP."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from devices.heartbeats import heartbeats_flush
from devices.models import Device, InstallReport, MetricWindow, ModelSlot
from devices.services.desired_state import desired_state_set
from devices.services.enrollment import enrollment_key_create
from devices.services.telemetry import metric_windows_flush
from hotswap_device import Agent
from models_app import services
from models_app.models import ModelVersion
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact
from tests.artifacts import onnx_model_bytes
from tests.live import gunicorn_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def make_version(version: str, hidden: int, name: str = "resnet") -> ModelVersion:
    artifact = PendingArtifact.receive(artifact_store(), [onnx_model_bytes(hidden=hidden)], filename="m.onnx",
                                       max_bytes=10**9)
    created, _ = services.model_version_upload(artifact=artifact, name=name, version=version, framework="onnx",
                                               uploaded_by=None)
    return created


def make_agent(url: str, data_dir, raw_key: str | None, device_id: str) -> tuple[Agent, list[str]]:
    agent = Agent(url, data_dir, enroll_key=raw_key, device_id=device_id, grace_seconds=0.05, warmup_runs=1)
    downloads: list[str] = []
    agent.client.download_client.event_hooks["request"].append(lambda request: downloads.append(str(request.url)))
    return agent, downloads


def set_desired(device_id: str, version: ModelVersion, *, rollback: bool = False) -> ModelSlot:
    desired_state_set(devices=Device.objects.filter(device_id=device_id), version=version, actor=None,
                      rollback=rollback, reason="agent live test")
    return ModelSlot.objects.get(device__device_id=device_id, ai_model=version.ai_model)


def reports(device_id: str) -> list[tuple[str, str]]:
    rows = InstallReport.objects.filter(device__device_id=device_id).order_by("reported_at", "id")
    return [(r.model_version, r.status) for r in rows]


def test_it_enrolls_installs_reports_upgrades_refuses_and_rolls_back(tmp_path):
    v1, v2 = make_version("1.0.0", 8), make_version("1.1.0", 9)
    _key, raw = enrollment_key_create(name="agents", created_by=None)

    with gunicorn_server() as (url, _process):
        agent, downloads = make_agent(url, tmp_path / "agent", raw, "live-1")
        try:
            assert agent.run_once().action == "none"  # enrolled; nothing desired yet
            device = Device.objects.get(device_id="live-1")

            desired = set_desired("live-1", v1)
            result = agent.run_once()

            assert (result.status, result.action, result.version) == ("ok", "installed", "1.0.0")
            assert reports("live-1") == [("1.0.0", "installed"), ("1.0.0", "active")]
            active = InstallReport.objects.get(device=device, status="active")
            assert (active.version, active.sequence) == (v1, desired.sequence)
            assert active.duration_ms is not None and active.traceparent == desired.traceparent
            heartbeats_flush()
            device.refresh_from_db()
            desired.refresh_from_db()
            assert (desired.reported_version, desired.running_version, desired.reported_sha256) == (
                "1.0.0", v1, v1.sha256)
            assert device.disk_percent is not None

            assert agent.run_once().status == "not_modified"  # ETag: nothing changed

            for seed in range(25):  # an application's calls through the agent
                rows = np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)
                assert agent.infer("resnet", {"input": rows}).version == "1.0.0"
            agent.flush_metrics()
            agent.run_once()
            assert metric_windows_flush() == 1  # what Celery beat does every METRIC_FLUSH_SECONDS
            window = MetricWindow.objects.get(device=device)
            assert (window.version, window.inference_count, window.error_count) == (v1, 25, 0)
            assert sum(window.latency_histogram) == 25
            assert window.latency_p50_ms <= window.latency_p95_ms <= window.latency_p99_ms

            set_desired("live-1", v2)
            assert agent.run_once().action == "installed"
            assert agent.runtime.active("resnet").version == "1.1.0"

            # A downgrade that is not a rollback, set before the server heard that 1.1.0 runs: the agent refuses.
            set_desired("live-1", v1)
            assert agent.run_once().action == "refused"
            refused = InstallReport.objects.get(device=device, status="refused")
            assert refused.model_version == "1.0.0" and "older than the running 1.1.0" in refused.error
            assert agent.runtime.active("resnet").version == "1.1.0"
            heartbeats_flush()
            desired.refresh_from_db()
            assert (desired.running_version, desired.state) == (v2, ModelSlot.State.REFUSED)
            assert "older than the running 1.1.0" in desired.refused_reason

            downloads.clear()
            set_desired("live-1", v1, rollback=True)
            assert agent.run_once().action == "installed"
            assert downloads == []  # the previous model was still on disk
            assert agent.runtime.active("resnet").version == "1.0.0"
            assert reports("live-1")[-2:] == [("1.0.0", "installed"), ("1.0.0", "active")]
        finally:
            agent.close()


def test_it_refuses_and_reports_a_manifest_signed_with_another_key(tmp_path):
    v1 = make_version("1.0.0", 8)
    _key, raw = enrollment_key_create(name="agents", created_by=None)
    other_key = base64.b64encode(os.urandom(32)).decode()

    with gunicorn_server() as (url, _process):
        agent, _ = make_agent(url, tmp_path / "agent", raw, "live-2")
        agent.run_once()  # pins the server's real key
        agent.close()
    set_desired("live-2", v1)
    # The same database behind a server signing with a key the device never pinned.
    with gunicorn_server(env={"MANIFEST_SIGNING_KEY": other_key}) as (url, _process):
        agent, downloads = make_agent(url, tmp_path / "agent", None, "live-2")
        try:
            result = agent.run_once()
        finally:
            agent.close()

    assert result.action == "refused" and agent.runtime.active("resnet") is None
    assert downloads == []
    [report] = InstallReport.objects.filter(device__device_id="live-2")
    assert (report.status, report.model_version) == ("refused", "1.0.0")
    assert "does not verify with the pinned key" in report.error


def test_it_reports_tampered_artifact_bytes_as_failed(tmp_path):
    v1 = make_version("1.0.0", 8)
    _key, raw = enrollment_key_create(name="agents", created_by=None)
    # Same size, one byte flipped, written over the stored object behind the registry's back.
    content = bytearray(onnx_model_bytes(hidden=8))
    content[200] ^= 0xFF
    writer = artifact_store().writer(v1.storage_key)
    writer.write(bytes(content))
    writer.commit()

    with gunicorn_server() as (url, _process):
        agent, downloads = make_agent(url, tmp_path / "agent", raw, "live-3")
        try:
            agent.run_once()
            set_desired("live-3", v1)
            result = agent.run_once()
        finally:
            agent.close()

    assert result.action == "failed" and len(downloads) == 1
    [report] = InstallReport.objects.filter(device__device_id="live-3")
    assert report.status == "failed" and report.error.startswith("sha256 mismatch")
    assert list(agent.store.models.iterdir()) == []
