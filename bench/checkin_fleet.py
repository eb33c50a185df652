"""Check-in bench setup, run inside Django: N registered devices with credentials, half with a desired version.

`DJANGO_SETTINGS_MODULE=hotswap.settings.base python bench/checkin_fleet.py --devices 10000 --artifact m.onnx
--out credentials.txt` uploads the artifact through the registry service, bulk-creates the Device,
DesiredState and DeviceCredential rows (seconds, not minutes: no per-device service calls), writes one raw
credential per line to --out and prints the running model as JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django

BATCH = 2000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--artifact", type=Path, required=True, help="ONNX file to register as bench-model 1.0.0")
    parser.add_argument("--out", type=Path, required=True, help="file for the raw credentials, one per line")
    parser.add_argument("--desired-share", type=float, default=0.5, help="share of devices given a desired version")
    args = parser.parse_args()
    django.setup()

    from django.utils import timezone

    from devices.credentials import DEVICE_KIND, new_secret
    from devices.models import DesiredState, Device, DeviceCredential
    from hotswap.lib.tracing import new_traceparent
    from hotswap_device.fleet import device_spec
    from models_app.services import model_version_upload
    from models_app.storage import artifact_store
    from models_app.uploads import PendingArtifact

    with args.artifact.open("rb") as handle:
        artifact = PendingArtifact.receive(artifact_store(), iter(lambda: handle.read(1024 * 1024), b""),
                                           filename=args.artifact.name, max_bytes=10**10)
    version, _ = model_version_upload(artifact=artifact, name="bench-model", version="1.0.0", framework="onnx",
                                      uploaded_by=None)

    specs = [device_spec(i, prefix="bench-") for i in range(1, args.devices + 1)]
    devices = Device.objects.bulk_create([
        Device(device_id=s.device_id, name=s.name, device_type=s.device_type, region=s.region, tags=list(s.tags),
               cpu_cores=s.capabilities["cpu_cores"], memory_mb=s.capabilities["memory_mb"],
               storage_gb=s.capabilities["storage_gb"], gpu=s.capabilities["gpu"] or "")
        for s in specs
    ], batch_size=BATCH)
    now, every = timezone.now(), max(1, round(1 / args.desired_share)) if args.desired_share > 0 else 0
    DesiredState.objects.bulk_create([
        DesiredState(device=device, version=version, sequence=1, source="bench", set_at=now,
                     traceparent=new_traceparent())
        if every and i % every == 0 else DesiredState(device=device)
        for i, device in enumerate(devices)
    ], batch_size=BATCH)
    secrets, prefixes = [], set()
    while len(secrets) < len(devices):
        secret = new_secret(DEVICE_KIND)
        if secret.prefix not in prefixes:  # 32-bit prefixes: a collision among 10,000 is likely enough to matter
            prefixes.add(secret.prefix)
            secrets.append(secret)
    DeviceCredential.objects.bulk_create([
        DeviceCredential(device=device, prefix=secret.prefix, key_hash=secret.key_hash)
        for device, secret in zip(devices, secrets, strict=True)
    ], batch_size=BATCH)
    args.out.write_text("".join(f"{secret.raw}\n" for secret in secrets))
    desired = DesiredState.objects.filter(version__isnull=False).count()
    print(json.dumps({"model": version.ai_model.name, "version": version.version, "sha256": version.sha256,
                      "devices": len(devices), "desired": desired}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
