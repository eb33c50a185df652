"""Desired state of model slots: the one module that writes it, for operators and for rollouts.

A device runs several models, one slot per (device, model) (devices.models.ModelSlot). Every change of a
slot's desired state goes through `_slots_write`, the one statement that bumps its `sequence`: operators'
changes (one device or a filter, `desired_state_set` and `desired_model_remove`) and the bulk offers and
reverts of rollouts (`desired_offer`, `desired_revert`, arrays of a million devices in one statement).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.db.models import BooleanField, Case, F, Lookup, Q, QuerySet, Value, When
from django.utils import timezone

from devices.models import Device, ModelSlot
from hotswap.exceptions import ApplicationError, ConflictError
from hotswap.lib.tracing import new_traceparent
from hotswap_device.protocol import MAX_MODELS
from models_app.models import AIModel, ModelVersion
from models_app.shipping import version_refusal

logger = logging.getLogger(__name__)

# Problems listed per device in an error's details; the message gives the total.
MAX_DETAILS = 20


def slot_occupies_sql(alias: str) -> str:
    """SQL true when the slot `alias` takes one of the device's protocol.MAX_MODELS places: its model runs or is
    to run (a model being removed keeps its place until the device says it is gone)."""
    return f"({alias}.version_id IS NOT NULL OR {alias}.running_version_id IS NOT NULL)"


def slot_has_model_sql(alias: str) -> str:
    """SQL true when the slot `alias` means its device has the model: it runs it or is to run it, and it is not
    being removed. What a distribution without a target goes to (rollouts.planning)."""
    return f"(NOT {alias}.remove AND {slot_occupies_sql(alias)})"


@dataclass
class DesiredStateResult:
    """How a desired-state change went: devices changed, already there, and skipped with a reason."""

    matched: int = 0  # devices given (changed + unchanged + skipped)
    changed: int = 0
    unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class SlotWrite:
    """What one statement writes into one model's slots (arrays: one element per device)."""

    ai_model_id: int
    device_ids: Sequence[int]
    version_ids: Sequence[int | None]  # None: remove the model from the device
    rollback: bool
    source: str
    reason: str
    traceparent: str
    now: datetime
    actor_id: int | None = None
    # False for a rollout's offer: a retry is a new offer (a new sequence) even for the same version.
    only_changes: bool = True
    # A revert: only slots still at these sequences change (nobody moved them on since); none is created.
    expected_sequences: Sequence[int] | None = None


# The one place a slot's desired state changes: a new slot starts at sequence 1, an existing one goes to
# sequence + 1. Rows go in device order, so concurrent writers lock slots in the same order. For a revert
# the proposed row carries the expected sequence, compared with the slot's on conflict.
_WRITE_SQL = """
    INSERT INTO devices_modelslot AS slot (device_id, ai_model_id, version_id, remove, rollback, sequence, source,
                                           reason, set_at, set_by_id, traceparent, reported_version,
                                           reported_sha256, refused_reason)
    SELECT w.device_id, %(model)s, w.version_id, w.version_id IS NULL, %(rollback)s AND w.version_id IS NOT NULL,
           coalesce(w.expected, 1), %(source)s, %(reason)s, %(now)s, %(actor)s, %(traceparent)s, '', '', ''
    FROM unnest(%(devices)s::bigint[], %(versions)s::bigint[], %(sequences)s::bigint[])
         AS w(device_id, version_id, expected)
    WHERE {insert_condition}
    ORDER BY w.device_id
    ON CONFLICT (device_id, ai_model_id) DO UPDATE SET
        version_id = EXCLUDED.version_id, remove = EXCLUDED.remove, rollback = EXCLUDED.rollback,
        sequence = slot.sequence + 1, source = EXCLUDED.source, reason = EXCLUDED.reason,
        set_at = EXCLUDED.set_at, set_by_id = EXCLUDED.set_by_id, traceparent = EXCLUDED.traceparent,
        refused_sequence = NULL, refused_reason = ''
    WHERE {update_condition}
    RETURNING slot.device_id, slot.sequence, slot.running_version_id
"""
_DIFFERS = ("(slot.version_id IS DISTINCT FROM EXCLUDED.version_id OR slot.remove <> EXCLUDED.remove "
            "OR slot.rollback <> EXCLUDED.rollback)")
_SLOT_EXISTS = ("EXISTS (SELECT 1 FROM devices_modelslot s WHERE s.device_id = w.device_id "
                "AND s.ai_model_id = %(model)s)")


def _slots_write(write: SlotWrite) -> list[tuple[int, int, int | None]]:
    """Writes the desired state; returns (device pk, new sequence, running version pk) of every slot changed."""
    insert_condition, update_condition = "true", _DIFFERS if write.only_changes else "true"
    sequences: Sequence[int | None] = [None] * len(write.device_ids)
    if write.expected_sequences is not None:
        insert_condition, update_condition = _SLOT_EXISTS, f"slot.sequence = EXCLUDED.sequence AND {_DIFFERS}"
        sequences = write.expected_sequences
    with connection.cursor() as cursor:
        cursor.execute(_WRITE_SQL.format(insert_condition=insert_condition, update_condition=update_condition), {
            "model": write.ai_model_id, "rollback": write.rollback, "source": write.source[:64],
            "reason": write.reason[:500], "now": write.now, "actor": write.actor_id,
            "traceparent": write.traceparent or new_traceparent(), "devices": list(write.device_ids),
            "versions": list(write.version_ids), "sequences": list(sequences),
        })
        return cursor.fetchall()


def _skip_reason(status: str, memory_mb: int | None, device_type: str, version: ModelVersion | None) -> str | None:
    """Why a device with these fields does not get the change, or None. `_unfit` says the same in SQL."""
    if status == Device.Status.DECOMMISSIONED:
        return "decommissioned"
    if version is None:
        return None
    if version.min_memory_mb and memory_mb is not None and memory_mb < version.min_memory_mb:
        return f"has {memory_mb} MB of memory, {version.model_id} needs {version.min_memory_mb} MB"
    if version.target_device_type and device_type and device_type != version.target_device_type:
        return f"is a {device_type}, {version.model_id} targets {version.target_device_type}"
    return None


def _unfit(version: ModelVersion | None) -> Case:
    """SQL true for the devices `_skip_reason` skips, false for the others (a NULL memory never skips)."""
    unfit = Q(status=Device.Status.DECOMMISSIONED)
    if version is not None and version.min_memory_mb:
        unfit |= Q(memory_mb__lt=version.min_memory_mb)
    if version is not None and version.target_device_type:
        unfit |= ~Q(device_type="") & ~Q(device_type=version.target_device_type)
    return Case(When(unfit, then=Value(True)), default=Value(False), output_field=BooleanField())


def _skip(result: DesiredStateResult, device_id: str, reason: str) -> None:
    result.skipped.append({"device_id": device_id, "reason": f"{device_id} {reason}"})


def _eligible(devices: Iterable[Device] | QuerySet[Device], version: ModelVersion | None,
              result: DesiredStateResult) -> list[int]:
    """The pks of the devices to change, in order; the others go to result.skipped with their reason."""
    if isinstance(devices, QuerySet) and not devices.query.is_sliced:
        # A filter may match the whole fleet: the database splits it, and only the skipped devices' fields and
        # the others' pks come back (no model instances).
        rows = devices.annotate(unfit=_unfit(version))
        for device_id, status, memory_mb, device_type in rows.filter(unfit=True).values_list(
                "device_id", "status", "memory_mb", "device_type"):
            _skip(result, device_id, _skip_reason(status, memory_mb, device_type, version) or "is not eligible")
        eligible = list(rows.filter(unfit=False).order_by("pk").values_list("pk", flat=True))
        result.matched = len(eligible) + len(result.skipped)
        return eligible
    pks = set()
    for device in devices:
        result.matched += 1
        if skip := _skip_reason(device.status, device.memory_mb, device.device_type, version):
            _skip(result, device.device_id, skip)
        else:
            pks.add(device.pk)
    return sorted(pks)


class _AnyOf(Lookup):
    """`field = ANY(array)`: the devices go as one array parameter, where `__in` makes one parameter each."""

    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::bigint[])", [*lhs_params, list(self.rhs)]


def _any_of(field_name: str, pks: Sequence[int]) -> _AnyOf:
    return _AnyOf(F(field_name), pks)


def _refuse(message: str, problems: list[tuple[str, str]], *, code: str, error=ApplicationError,
            extra: dict | None = None) -> None:
    """Raises one error listing the first problems (device, message) and how many there are."""
    more = f" ({len(problems)} devices)" if len(problems) > 1 else ""
    raise error(message + more, code=code, extra=extra,
                details=[{"field": f"devices.{device_id}", "message": text} for device_id, text in
                         problems[:MAX_DETAILS]])


class DistributionHoldsDevices(ConflictError):
    """A distribution of the model holds some of the devices: pause or abort it before changing them by hand."""

    code = "DISTRIBUTION_IN_PROGRESS"


def _check_not_held(eligible: list[int], ai_model: AIModel) -> None:
    """409 naming the open distributions of this model that hold any of the devices: never a silent override."""
    from rollouts.models import Assignment  # rollouts depends on devices, not the other way round

    held = list(Assignment.objects.filter(_any_of("device_id", eligible), ai_model=ai_model, is_open=True)
                .values_list("device__device_id", "distribution_id", "distribution__name").order_by("device_id"))
    if not held:
        return
    distributions = sorted({(pk, name or f"distribution {pk}") for _device, pk, name in held})
    listed = ", ".join(f"{name} (#{pk})" for pk, name in distributions)
    _refuse(f"A distribution of {ai_model.name} holds these devices: {listed}. Pause or abort it first, or let it "
            "finish", [(device_id, f"held by distribution #{pk}") for device_id, pk, _name in held],
            code="DISTRIBUTION_IN_PROGRESS", error=DistributionHoldsDevices,
            extra={"distributions": [{"id": pk, "name": name} for pk, name in distributions]})


def _check_not_older(eligible: list[int], version: ModelVersion) -> None:
    """400 when a device's slot runs a later version and the change is not marked a rollback: the agent
    would refuse the older version for ever (it only goes back on a rollback)."""
    later = list(ModelSlot.objects.filter(_any_of("device_id", eligible), ai_model_id=version.ai_model_id,
                                          running_version__precedence__gt=version.precedence)
                 .values_list("device__device_id", "running_version__model_id").order_by("device_id"))
    if later:
        _refuse(f"{version.model_id} is older than the version some devices run; set rollback to true to roll them "
                "back to it", [(device_id, f"runs {running}; {version.model_id} is older, so it is a rollback")
                               for device_id, running in later],
                code="ROLLBACK_NOT_MARKED")


def _check_slot_limit(eligible: list[int], ai_model: AIModel) -> None:
    """400 when a device would get one model slot more than protocol.MAX_MODELS."""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT d.device_id, count(*) FROM devices_modelslot s JOIN devices_device d ON d.id = s.device_id
            WHERE s.device_id = ANY(%s::bigint[]) AND {slot_occupies_sql("s")}
              AND NOT EXISTS (SELECT 1 FROM devices_modelslot m WHERE m.device_id = s.device_id
                              AND m.ai_model_id = %s AND {slot_occupies_sql("m")})
            GROUP BY s.device_id, d.device_id HAVING count(*) >= %s ORDER BY s.device_id
        """, [eligible, ai_model.pk, MAX_MODELS])  # noqa: S608 - a fixed fragment
        full = cursor.fetchall()
    if full:
        _refuse(f"A device runs at most {MAX_MODELS} models; remove one before adding {ai_model.name}",
                [(device_id, f"already has {count} models") for device_id, count in full],
                code="TOO_MANY_MODELS")


def _finish(result: DesiredStateResult, eligible: list[int], changed: list, what: str,
            source: str) -> DesiredStateResult:
    result.changed = len(changed)
    result.unchanged = len(eligible) - result.changed
    logger.info("desired state set", extra={"desired": what, "source": source, "changed": result.changed,
                                            "skipped": len(result.skipped)})
    return result


@transaction.atomic
def desired_state_set(
    *,
    devices: Iterable[Device] | QuerySet[Device],
    version: ModelVersion,
    actor=None,
    rollback: bool = False,
    reason: str = "",
    source: str = "manual",
    traceparent: str = "",
) -> DesiredStateResult:
    """Makes `version` the desired state of its model's slot on the given devices; other slots stay as they are.

    A slot is created where the device has none for the model. A slot already at this state is left alone,
    so repeating a call, or two operators doing the same thing, changes nothing the second time. Devices
    that are decommissioned or do not meet the version's requirements are skipped, with the reason.
    All or nothing, refused with the devices named: 409 DISTRIBUTION_IN_PROGRESS while an open distribution
    of this model holds one of them; 400 ROLLBACK_NOT_MARKED for a version older than one a device runs
    without `rollback`; 400 TOO_MANY_MODELS above protocol.MAX_MODELS models on a device.
    """
    if refusal := version_refusal(version, rollback=rollback, unvalidated_ok=True):
        raise ApplicationError(refusal, code="VERSION_NOT_DEPLOYABLE")
    result = DesiredStateResult()
    eligible = _eligible(devices, version, result)
    _check_not_held(eligible, version.ai_model)
    if not rollback:
        _check_not_older(eligible, version)
    _check_slot_limit(eligible, version.ai_model)
    changed = _slots_write(SlotWrite(
        ai_model_id=version.ai_model_id, device_ids=eligible, version_ids=[version.pk] * len(eligible),
        rollback=rollback, source=source, reason=reason, traceparent=traceparent, now=timezone.now(),
        actor_id=getattr(actor, "pk", None)))
    return _finish(result, eligible, changed, version.model_id, source)


@transaction.atomic
def desired_model_remove(
    *,
    devices: Iterable[Device] | QuerySet[Device],
    ai_model: AIModel,
    actor=None,
    reason: str = "",
    source: str = "manual",
) -> DesiredStateResult:
    """Asks the given devices to unload and delete `ai_model` (its slot's desired state: remove).

    Devices without the model (no slot, or one with nothing desired or running) are unchanged. 409
    DISTRIBUTION_IN_PROGRESS while an open distribution of the model holds one of them.
    """
    result = DesiredStateResult()
    eligible = _eligible(devices, None, result)
    _check_not_held(eligible, ai_model)
    having = list(ModelSlot.objects.filter(_any_of("device_id", eligible), ai_model=ai_model).exclude(
        version__isnull=True, running_version__isnull=True, remove=False).order_by("device_id")
        .values_list("device_id", flat=True))
    changed = _slots_write(SlotWrite(
        ai_model_id=ai_model.pk, device_ids=having, version_ids=[None] * len(having), rollback=False,
        source=source, reason=reason, traceparent="", now=timezone.now(), actor_id=getattr(actor, "pk", None)))
    return _finish(result, eligible, changed, f"remove {ai_model.name}", source)


def desired_offer(*, ai_model_id: int, device_ids: Sequence[int], version_ids: Sequence[int], rollback: bool,
                  source: str, reason: str, traceparent: str, now: datetime) -> list[tuple[int, int, int | None]]:
    """A rollout's offer: each device's slot of the model gets its version, in one statement for the whole set.

    Every slot given is written (sequence + 1) even when it already holds the version: a retry is a new
    offer the device answers again. Returns (device pk, sequence, running version pk) per slot. The caller
    (rollouts) holds the devices through its open assignments of this model.
    """
    return _slots_write(SlotWrite(ai_model_id=ai_model_id, device_ids=device_ids, version_ids=version_ids,
                                  rollback=rollback, source=source, reason=reason, traceparent=traceparent, now=now,
                                  only_changes=False))


def desired_revert(*, ai_model_id: int, device_ids: Sequence[int], version_ids: Sequence[int | None],
                   expected_sequences: Sequence[int], source: str, reason: str, traceparent: str, now: datetime,
                   actor=None) -> int:
    """A rollout's rollback: each slot goes back to its version before (None: the device did not have the
    model, so it is removed), marked a rollback, but only where the slot's sequence is still the one the
    rollout set: a slot an operator or a later rollout moved on is left alone. Returns how many changed.
    """
    return len(_slots_write(SlotWrite(
        ai_model_id=ai_model_id, device_ids=device_ids, version_ids=version_ids, rollback=True, source=source,
        reason=reason, traceparent=traceparent, now=now, actor_id=getattr(actor, "pk", None),
        expected_sequences=expected_sequences)))
