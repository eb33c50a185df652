"""Small builders for check-in tests: devices with credentials, versions, check-in calls and bodies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.db.models import F
from django.utils import timezone

from devices.credentials import DEVICE_KIND, new_secret
from devices.models import Device, DeviceCredential, ModelSlot
from models_app import services
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact
from tests.artifacts import onnx_model_bytes


def device_with_credential(device_id: str = "cam-1", **fields) -> tuple[Device, str]:
    device = Device.objects.create(device_id=device_id, device_type=fields.pop("device_type", "edge-camera"),
                                   region=fields.pop("region", "eu-west"), **fields)
    secret = new_secret(DEVICE_KIND)
    DeviceCredential.objects.create(device=device, prefix=secret.prefix, key_hash=secret.key_hash)
    return device, secret.raw


def registry_version(name: str = "resnet", version: str = "1.0.0", hidden: int = 8, **fields):
    content = onnx_model_bytes(hidden=hidden)
    artifact = PendingArtifact.receive(artifact_store(), [content], filename="m.onnx", max_bytes=10**9)
    created, _ = services.model_version_upload(artifact=artifact, name=name, version=version, framework="onnx",
                                               uploaded_by=None, **fields)
    return created, content


def slot_set(device: Device, version=None, *, ai_model=None, remove: bool = False, rollback: bool = False,
             traceparent: str = "", source: str = "manual") -> ModelSlot:
    """Sets one slot's desired state as devices.services.desired_state does (sequence + 1), through the ORM."""
    ai_model = ai_model or version.ai_model
    slot, _ = ModelSlot.objects.get_or_create(device=device, ai_model=ai_model)
    ModelSlot.objects.filter(pk=slot.pk).update(
        version=None if remove else version, remove=remove, rollback=rollback, traceparent=traceparent,
        source=source, sequence=F("sequence") + 1, set_at=timezone.now(), refused_sequence=None, refused_reason="")
    slot.refresh_from_db()
    return slot


def running(model: str = "resnet", version: str = "1.0.0", sha256: str = "") -> dict:
    """One entry of a check-in's `models` list."""
    return {"model": model, "version": version, "sha256": sha256}


def v2(models: list[dict] | None = None, **fields) -> dict:
    """A protocol 2 check-in body: `models` (default: none running) and any other fields."""
    return {"protocol": 2, "models": models or [], **fields}


def checkin(client, credential: str, body: dict | bytes | None = None, etag: str | None = None, *,
            exact: bool = False):
    """POSTs a check-in. A dict body is completed to protocol 2 (`protocol`, `models: []`) unless exact."""
    headers = {"HTTP_AUTHORIZATION": f"Device {credential}"}
    if etag:
        headers["HTTP_IF_NONE_MATCH"] = etag
    if not isinstance(body, bytes) and not exact:
        body = {"protocol": 2, "models": [], **(body or {})}
    payload = body if isinstance(body, bytes) else json.dumps(body)
    return client.post("/api/v1/devices/checkin", payload, content_type="application/json", **headers)


def metric_window(model: str = "resnet", version: str = "1.0.0", *, end: datetime | None = None,
                  count: int = 600, errors: int = 1, p50: float = 3.0, p95: float = 5.0, p99: float = 7.0,
                  **extra) -> dict:
    end = end or timezone.now() - timedelta(seconds=1)
    return {"model": model, "version": version, "window_start": (end - timedelta(minutes=1)).isoformat(),
            "window_end": end.isoformat(), "inference_count": count, "error_count": errors,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99}, **extra}
