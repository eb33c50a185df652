"""Desired state: which model version each device should run. Rollouts and operators both set it here."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from devices.models import Device, ModelSlot
from hotswap.exceptions import ApplicationError
from hotswap.lib.tracing import new_traceparent
from models_app.models import ModelVersion
from models_app.shipping import version_refusal

logger = logging.getLogger(__name__)


@dataclass
class DesiredStateResult:
    """How a desired-state change went: devices changed, already there, and skipped with a reason."""

    changed: int = 0
    unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def _skip_reason(device: Device, version: ModelVersion | None) -> str | None:
    if device.status == Device.Status.DECOMMISSIONED:
        return "decommissioned"
    if version is None:
        return None
    if version.min_memory_mb and device.memory_mb is not None and device.memory_mb < version.min_memory_mb:
        return f"has {device.memory_mb} MB of memory, {version.model_id} needs {version.min_memory_mb} MB"
    if version.target_device_type and device.device_type and device.device_type != version.target_device_type:
        return f"is a {device.device_type}, {version.model_id} targets {version.target_device_type}"
    return None


@transaction.atomic
def desired_state_set(
    *,
    devices: Iterable[Device] | QuerySet[Device],
    version: ModelVersion | None,
    actor=None,
    rollback: bool = False,
    reason: str = "",
    source: str = "manual",
    traceparent: str = "",
) -> DesiredStateResult:
    """Makes `version` (or nothing in particular, for None) the desired state of the given devices.

    One conditional UPDATE bumps `sequence` only where the state really changes, so repeating a
    call, or two operators doing the same thing, changes nothing the second time. Devices that
    are decommissioned or do not meet the version's requirements are skipped, with the reason.
    """
    if version is not None and (refusal := version_refusal(version, rollback=rollback, unvalidated_ok=True)):
        raise ApplicationError(refusal, code="VERSION_NOT_DEPLOYABLE")
    result = DesiredStateResult()
    eligible: list[int] = []
    for device in devices:
        if skip := _skip_reason(device, version):
            result.skipped.append({"device_id": device.device_id, "reason": f"{device.device_id} {skip}"})
        else:
            eligible.append(device.pk)
    # Stop-gap port to model slots on the server branch (i14-server): devices/services/desired_state.py is
    # rewritten on i14-rollouts; take that version when merging.
    if version is None:
        raise ApplicationError("Name a version: a slot's desired state is per model.", code="VALIDATION_ERROR")
    ModelSlot.objects.bulk_create([ModelSlot(device_id=pk, ai_model_id=version.ai_model_id) for pk in eligible],
                                  ignore_conflicts=True)
    already = Q(version=version, rollback=rollback, remove=False)
    result.changed = (
        ModelSlot.objects.filter(device_id__in=eligible, ai_model_id=version.ai_model_id).exclude(already).update(
            remove=False, refused_sequence=None, refused_reason="",
            version=version, rollback=rollback, sequence=F("sequence") + 1, set_at=timezone.now(),
            set_by=actor, reason=reason[:500], source=source[:64], traceparent=traceparent or new_traceparent(),
        )
    )
    result.unchanged = len(eligible) - result.changed
    logger.info("desired state set", extra={"version": getattr(version, "model_id", None), "source": source,
                                            "changed": result.changed, "skipped": len(result.skipped)})
    return result
