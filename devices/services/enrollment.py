"""Writes for enrollment: fleet enrollment keys (create, revoke) and a device enrolling itself with one."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from devices.credentials import ENROLLMENT_KIND, new_secret, secret_matches, split_secret
from devices.models import Device, EnrollmentKey
from devices.services.credentials import device_credential_issue
from devices.services.registry import device_register
from hotswap.exceptions import ApplicationError

logger = logging.getLogger(__name__)

CAPABILITY_FIELDS = ("cpu_cores", "memory_mb", "storage_gb", "gpu")


def _field_error(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, code="VALIDATION_ERROR", details=[{"field": field, "message": message}])


def _key_invalid() -> ApplicationError:
    # One answer for unknown, revoked, expired and used up: a guesser learns nothing about which.
    return ApplicationError("The enrollment key is unknown, revoked, expired or used up.",
                            code="ENROLLMENT_KEY_INVALID", status_code=403)


@transaction.atomic
def enrollment_key_create(
    *,
    name: str,
    created_by: AbstractBaseUser | None,
    expires_at: datetime | None = None,
    max_uses: int | None = None,
    now: datetime | None = None,
) -> tuple[EnrollmentKey, str]:
    """Makes a fleet enrollment key; returns it with the raw `hse_…` key, which is never stored."""
    if expires_at is not None and expires_at <= (now or timezone.now()):
        raise _field_error("expires_at", "The expiry must be in the future.")
    if max_uses is not None and max_uses < 1:
        raise _field_error("max_uses", "A key must allow at least one use (leave it empty for no limit).")
    secret = new_secret(ENROLLMENT_KIND)
    while EnrollmentKey.objects.filter(prefix=secret.prefix).exists():
        secret = new_secret(ENROLLMENT_KIND)
    key = EnrollmentKey(name=name, prefix=secret.prefix, key_hash=secret.key_hash, created_by=created_by,
                        expires_at=expires_at, max_uses=max_uses)
    key.full_clean()
    key.save()
    logger.info("enrollment key created", extra={"key": name, "prefix": secret.prefix, "actor": str(created_by)})
    return key, secret.raw


@transaction.atomic
def enrollment_key_revoke(*, key: EnrollmentKey, actor: AbstractBaseUser | None,
                          now: datetime | None = None) -> EnrollmentKey:
    """Revokes a key; devices already enrolled with it keep working. Revoking again changes nothing."""
    revoked = EnrollmentKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=now or timezone.now()
    )
    key.refresh_from_db(fields=["revoked_at"])
    if revoked:
        logger.info("enrollment key revoked", extra={"key": key.name, "prefix": key.prefix, "actor": str(actor)})
    return key


@transaction.atomic
def device_enroll(
    *,
    raw_key: str,
    device_id: str,
    name: str = "",
    device_type: str = "",
    region: str = "",
    tags: Iterable[str] = (),
    capabilities: dict | None = None,
    now: datetime | None = None,
) -> tuple[Device, str]:
    """A device registers itself with a fleet key; returns the device and its raw credential (shown once).

    The key's use is claimed with a conditional UPDATE in the same transaction as the device, its
    desired state and its credential: racing enrollments never exceed `max_uses`, and a refused
    enrollment (duplicate id, invalid fields) gives the use back by rolling back.
    """
    now = now or timezone.now()
    split = split_secret(raw_key or "", ENROLLMENT_KIND)
    if split is None:
        raise _key_invalid()
    prefix, secret = split
    key = EnrollmentKey.objects.filter(prefix=prefix).first()
    if key is None or not secret_matches(secret, key.key_hash):
        raise _key_invalid()
    claimed = (
        EnrollmentKey.objects.filter(pk=key.pk, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .filter(Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")))
        .update(uses=F("uses") + 1)
    )
    if not claimed:
        raise _key_invalid()
    capabilities = capabilities or {}
    unknown = sorted(set(capabilities) - set(CAPABILITY_FIELDS))
    if unknown:
        raise _field_error(f"capabilities.{unknown[0]}", "Unknown capability.")
    device = device_register(
        device_id=device_id, name=name, device_type=device_type, region=region, tags=tags,
        enrollment_key=key, **{field: capabilities.get(field) for field in CAPABILITY_FIELDS},
    )
    _credential, raw_credential = device_credential_issue(device=device, revoke_existing=False, now=now)
    logger.info("device enrolled", extra={"device_id": device_id, "key": key.name})
    return device, raw_credential
