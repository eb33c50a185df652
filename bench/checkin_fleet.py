"""Check-in bench setup, run inside Django: devices with credentials running one model, and others running three.

`DJANGO_SETTINGS_MODULE=hotswap.settings.base python bench/checkin_fleet.py --devices 10000 --multi-devices 10000
--artifact m.onnx --out credentials.txt --out-multi credentials-3.txt` uploads the artifact through the registry
service as three models (bench-model, bench-recogniser, bench-orientation, each 1.0.0), bulk-creates the Device,
ModelSlot and DeviceCredential rows (seconds, not minutes: no per-device service calls): --devices devices run
bench-model, --multi-devices devices run all three; a share of each (--desired-share) also has every slot's
desired state set, so their answers carry one signed manifest per slot. It writes one raw credential per line
to --out and --out-multi and prints the models and counts as JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django

BATCH = 2000
MODELS = ("bench-model", "bench-recogniser", "bench-orientation")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="devices running one model")
    parser.add_argument("--multi-devices", type=int, default=10_000, help="devices running three models")
    parser.add_argument("--artifact", type=Path, required=True, help="ONNX file to register as each model's 1.0.0")
    parser.add_argument("--out", type=Path, required=True, help="file for the one-model devices' raw credentials")
    parser.add_argument("--out-multi", type=Path, required=True, help="the same for the three-model devices")
    parser.add_argument("--desired-share", type=float, default=0.5, help="share of devices given desired versions")
    args = parser.parse_args()
    django.setup()

    from django.utils import timezone

    from devices.credentials import DEVICE_KIND, new_secret
    from devices.models import Device, DeviceCredential, ModelSlot
    from hotswap.lib.tracing import new_traceparent
    from hotswap_device.fleet import device_spec
    from models_app.services import model_version_upload
    from models_app.storage import artifact_store
    from models_app.uploads import PendingArtifact

    versions = []
    for name in MODELS:
        with args.artifact.open("rb") as handle:
            artifact = PendingArtifact.receive(artifact_store(), iter(lambda: handle.read(1024 * 1024), b""),
                                               filename=args.artifact.name, max_bytes=10**10)
        versions.append(model_version_upload(artifact=artifact, name=name, version="1.0.0", framework="onnx",
                                             uploaded_by=None)[0])

    specs = [device_spec(i, prefix="bench-") for i in range(1, args.devices + args.multi_devices + 1)]
    devices = Device.objects.bulk_create([
        Device(device_id=s.device_id, name=s.name, device_type=s.device_type, region=s.region, tags=list(s.tags),
               cpu_cores=s.capabilities["cpu_cores"], memory_mb=s.capabilities["memory_mb"],
               storage_gb=s.capabilities["storage_gb"], gpu=s.capabilities["gpu"] or "")
        for s in specs
    ], batch_size=BATCH)
    single, multi = devices[:args.devices], devices[args.devices:]
    now, every = timezone.now(), max(1, round(1 / args.desired_share)) if args.desired_share > 0 else 0

    def slot(device: Device, version, desired: bool) -> ModelSlot:
        # What a check-in reported (it runs the version) and, for some, the same version desired.
        desired_state = {"version": version, "sequence": 1, "source": "bench", "set_at": now,
                         "traceparent": new_traceparent()} if desired else {}
        return ModelSlot(device=device, ai_model_id=version.ai_model_id, running_version=version,
                         reported_version=version.version, reported_sha256=version.sha256, reported_at=now,
                         **desired_state)

    ModelSlot.objects.bulk_create([
        slot(device, version, bool(every) and i % every == 0)
        for group, models in ((single, versions[:1]), (multi, versions))
        for i, device in enumerate(group) for version in models
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
    args.out.write_text("".join(f"{secret.raw}\n" for secret in secrets[:args.devices]))
    args.out_multi.write_text("".join(f"{secret.raw}\n" for secret in secrets[args.devices:]))

    def desired(group: list[Device]) -> int:
        return Device.objects.filter(pk__in=[d.pk for d in group], slots__version__isnull=False).distinct().count()

    print(json.dumps({"models": [{"model": v.ai_model.name, "version": v.version, "sha256": v.sha256}
                                 for v in versions],
                      "devices": len(single), "desired": desired(single),
                      "multi_devices": len(multi), "multi_desired": desired(multi)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
