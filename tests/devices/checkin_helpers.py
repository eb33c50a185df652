"""Small builders for check-in tests: devices with credentials, versions, check-in calls and bodies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.utils import timezone

from devices.credentials import DEVICE_KIND, new_secret
from devices.models import DesiredState, Device, DeviceCredential
from models_app import services
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact
from tests.artifacts import onnx_model_bytes


def device_with_credential(device_id: str = "cam-1", **fields) -> tuple[Device, str]:
    device = Device.objects.create(device_id=device_id, device_type=fields.pop("device_type", "edge-camera"),
                                   region=fields.pop("region", "eu-west"), **fields)
    DesiredState.objects.create(device=device)
    secret = new_secret(DEVICE_KIND)
    DeviceCredential.objects.create(device=device, prefix=secret.prefix, key_hash=secret.key_hash)
    return device, secret.raw


def registry_version(name: str = "resnet", version: str = "1.0.0", hidden: int = 8, **fields):
    content = onnx_model_bytes(hidden=hidden)
    artifact = PendingArtifact.receive(artifact_store(), [content], filename="m.onnx", max_bytes=10**9)
    created, _ = services.model_version_upload(artifact=artifact, name=name, version=version, framework="onnx",
                                               uploaded_by=None, **fields)
    return created, content


def checkin(client, credential: str, body: dict | bytes | None = None, etag: str | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Device {credential}"}
    if etag:
        headers["HTTP_IF_NONE_MATCH"] = etag
    payload = body if isinstance(body, bytes) else json.dumps(body or {})
    return client.post("/api/v1/devices/checkin", payload, content_type="application/json", **headers)


def metric_window(model: str = "resnet", version: str = "1.0.0", *, end: datetime | None = None,
                  count: int = 600, errors: int = 1, p50: float = 3.0, p95: float = 5.0, p99: float = 7.0,
                  **extra) -> dict:
    end = end or timezone.now() - timedelta(seconds=1)
    return {"model": model, "version": version, "window_start": (end - timedelta(minutes=1)).isoformat(),
            "window_end": end.isoformat(), "inference_count": count, "error_count": errors,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99}, **extra}
