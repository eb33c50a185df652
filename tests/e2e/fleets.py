"""Fleets for end-to-end tests: devices registered in bulk with their model slots, and the simulator's state file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from devices.credentials import DEVICE_KIND, new_secret
from devices.models import Device, DeviceCredential, ModelSlot
from models_app.models import ModelVersion

# Rows per INSERT: a bench registers 10,000 devices (20,000 slots) with these too.
BATCH_SIZE = 2000


def register_fleet(specs: Iterable, runs: Sequence[ModelVersion] = ()) -> dict[str, str]:
    """Registers the devices as an operator pre-registers them, each running every version of `runs` (one slot
    per model, its running and reported version set as the heartbeat flush records them, nothing desired).
    Used by the end-to-end tests and by bench/rollback.py.

    Returns device_id → raw credential.
    """
    devices = Device.objects.bulk_create([
        Device(device_id=s.device_id, name=s.name, device_type=s.device_type, region=s.region, tags=list(s.tags),
               **{**s.capabilities, "gpu": s.capabilities["gpu"] or ""}) for s in specs], batch_size=BATCH_SIZE)
    ModelSlot.objects.bulk_create([
        ModelSlot(device=d, ai_model_id=v.ai_model_id, running_version=v, reported_version=v.version,
                  reported_sha256=v.sha256) for d in devices for v in runs], batch_size=BATCH_SIZE)
    secrets, prefixes = [], set()
    while len(secrets) < len(devices):  # 32-bit prefixes: skip the rare collision
        if (secret := new_secret(DEVICE_KIND)).prefix not in prefixes:
            prefixes.add(secret.prefix)
            secrets.append(secret)
    DeviceCredential.objects.bulk_create([DeviceCredential(device=d, prefix=s.prefix, key_hash=s.key_hash)
                                          for d, s in zip(devices, secrets, strict=True)],
                                         batch_size=BATCH_SIZE)
    return {d.device_id: s.raw for d, s in zip(devices, secrets, strict=True)}


def seed_simulator(path: Path, server: str, credentials: dict[str, str], runs: Sequence[ModelVersion],
                   poll_seconds: float) -> None:
    """The simulator's state file: each device has its credential and runs every version of `runs`, one slot per
    model that no manifest has set yet (it pins the server's key itself)."""
    slots = {v.ai_model.name: {"running": {"model": v.ai_model.name, "version": v.version, "sha256": v.sha256},
                               "running_sequence": 0, "last_sequence": 0, "removed": False} for v in runs}
    devices = {device_id: {"credential": raw, "slots": slots, "poll": poll_seconds}
               for device_id, raw in credentials.items()}
    path.write_text(json.dumps({"version": 1, "servers": {server.rstrip("/"): devices}}))
