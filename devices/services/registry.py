"""Writes to the device registry: register, update, decommission."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices.models import Device, DeviceCredential, EnrollmentKey
from devices.services.credentials import device_credential_issue
from hotswap.exceptions import ApplicationError, ConflictError

logger = logging.getLogger(__name__)

# Device ids that would be shadowed by (or shadow) the routes under /api/v1/devices/.
RESERVED_DEVICE_IDS = frozenset({"enroll", "checkin", "manifest-key", "desired"})
MAX_TAGS = 32
UPDATABLE_FIELDS = ("name", "device_type", "region", "tags", "cpu_cores", "memory_mb", "storage_gb", "gpu")


def _field_error(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, code="VALIDATION_ERROR", details=[{"field": field, "message": message}])


def _clean_tags(tags: Iterable[str]) -> list[str]:
    cleaned = list(dict.fromkeys(tag.strip() for tag in tags if tag and tag.strip()))
    if len(cleaned) > MAX_TAGS:
        raise _field_error("tags", f"A device has at most {MAX_TAGS} tags.")
    return cleaned


def device_exists_error(device_id: str) -> ConflictError:
    return ConflictError(
        f"A device with id '{device_id}' already exists; an operator can issue it a new credential.",
        code="DEVICE_EXISTS", details=[{"field": "device_id", "message": "Already registered."}],
    )


@transaction.atomic
def device_register(
    *,
    device_id: str,
    name: str = "",
    device_type: str = "",
    region: str = "",
    tags: Iterable[str] = (),
    cpu_cores: int | None = None,
    memory_mb: int | None = None,
    storage_gb: int | None = None,
    gpu: str | None = "",
    registered_by: AbstractBaseUser | None = None,
    enrollment_key: EnrollmentKey | None = None,
) -> Device:
    """Adds a device to the registry with no model slots yet (it runs whatever it has; check-ins add them)."""
    if device_id.lower() in RESERVED_DEVICE_IDS:
        raise _field_error("device_id", f"'{device_id}' is reserved; choose another device id.")
    if Device.objects.filter(device_id=device_id).exists():
        raise device_exists_error(device_id)
    device = Device(
        device_id=device_id, name=name, device_type=device_type, region=region, tags=_clean_tags(tags),
        cpu_cores=cpu_cores, memory_mb=memory_mb, storage_gb=storage_gb, gpu=gpu or "",
        registered_by=registered_by, enrollment_key=enrollment_key,
    )
    device.full_clean()
    try:
        with transaction.atomic():
            device.save()
    except IntegrityError:
        # Another registration of the same id committed between the check and the insert.
        if Device.objects.filter(device_id=device_id).exists():
            raise device_exists_error(device_id) from None
        raise
    logger.info("device registered", extra={"device_id": device_id,
                                            "via": "enrollment" if enrollment_key else "operator"})
    return device


@transaction.atomic
def device_update(*, device: Device, **fields) -> Device:
    """Changes a device's descriptive fields (name, type, region, tags, capabilities); reported fields stay."""
    unknown = sorted(set(fields) - set(UPDATABLE_FIELDS))
    if unknown:
        raise ApplicationError(
            f"These fields cannot be changed: {', '.join(unknown)}.", code="VALIDATION_ERROR",
            details=[{"field": field, "message": "Not an updatable field."} for field in unknown],
        )
    if "tags" in fields:
        fields["tags"] = _clean_tags(fields["tags"] or ())
    if "gpu" in fields:
        fields["gpu"] = fields["gpu"] or ""
    for field, value in fields.items():
        setattr(device, field, value)
    device.full_clean()
    # update_fields: check-ins write the reported fields concurrently; never overwrite them here.
    if fields:
        device.save(update_fields=list(fields))
    return device


@transaction.atomic
def device_decommission(*, device: Device, actor: AbstractBaseUser | None, now: datetime | None = None) -> Device:
    """Retires a device: status decommissioned and every credential revoked (history kept). Idempotent."""
    now = now or timezone.now()
    # The UPDATE locks the row, which orders it against a concurrent credential issue (select_for_update).
    changed = Device.objects.filter(pk=device.pk).exclude(status=Device.Status.DECOMMISSIONED).update(
        status=Device.Status.DECOMMISSIONED
    )
    revoked = DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).update(revoked_at=now)
    device.refresh_from_db()
    if changed or revoked:
        logger.info("device decommissioned", extra={"device_id": device.device_id, "actor": str(actor),
                                                    "credentials_revoked": revoked})
    return device


@transaction.atomic
def device_preregister(*, device_id: str, registered_by: AbstractBaseUser | None,
                       **fields) -> tuple[Device, DeviceCredential, str]:
    """An operator registers a device ahead of time: the device and its first credential (raw key shown once)."""
    device = device_register(device_id=device_id, registered_by=registered_by, **fields)
    credential, key = device_credential_issue(device=device, created_by=registered_by, revoke_existing=False)
    return device, credential, key
