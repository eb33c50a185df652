"""Writes for device credentials: issue (shown once, stored hashed) and revoke."""

from __future__ import annotations

import logging
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from devices.credentials import DEVICE_KIND, new_secret
from devices.models import Device, DeviceCredential
from hotswap.exceptions import ConflictError

logger = logging.getLogger(__name__)


@transaction.atomic
def device_credential_issue(
    *,
    device: Device,
    created_by: AbstractBaseUser | None = None,
    revoke_existing: bool = True,
    now: datetime | None = None,
) -> tuple[DeviceCredential, str]:
    """Makes a new credential for the device; returns it with the raw `hsd_…` key, which is never stored.

    With `revoke_existing` (the default) the device's other credentials stop working, so a
    re-provisioned or compromised device is locked out at its next call with the old one.
    """
    locked = Device.objects.select_for_update().get(pk=device.pk)
    if locked.status == Device.Status.DECOMMISSIONED:
        raise ConflictError(f"Device '{locked.device_id}' is decommissioned; it cannot get a credential.",
                            code="DEVICE_DECOMMISSIONED")
    if revoke_existing:
        DeviceCredential.objects.filter(device=locked, revoked_at__isnull=True).update(
            revoked_at=now or timezone.now()
        )
    secret = new_secret(DEVICE_KIND)
    # 2**32 prefixes: a collision is rare, but the unique index would turn one into a 500.
    while DeviceCredential.objects.filter(prefix=secret.prefix).exists():
        secret = new_secret(DEVICE_KIND)
    credential = DeviceCredential(device=locked, prefix=secret.prefix, key_hash=secret.key_hash,
                                  created_by=created_by)
    credential.full_clean()
    credential.save()
    logger.info("device credential issued", extra={"device_id": locked.device_id, "prefix": secret.prefix,
                                                   "revoked_existing": revoke_existing})
    return credential, secret.raw


@transaction.atomic
def device_credential_revoke(
    *, credential: DeviceCredential, actor: AbstractBaseUser | None = None, now: datetime | None = None
) -> DeviceCredential:
    """Revokes one credential; revoking it again changes nothing (the first revocation time stays)."""
    revoked = DeviceCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
        revoked_at=now or timezone.now()
    )
    credential.refresh_from_db(fields=["revoked_at"])
    if revoked:
        logger.info("device credential revoked", extra={"credential": str(credential), "actor": str(actor)})
    return credential
