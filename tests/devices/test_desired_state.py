"""The desired-state writer: one model's slot per change, idempotent, refusing what a device or a rollout would undo."""

from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone

from devices.models import Device, ModelSlot
from devices.services.desired_state import desired_model_remove, desired_offer, desired_revert, desired_state_set
from hotswap.exceptions import ApplicationError
from hotswap_device.protocol import MAX_MODELS
from models_app.models import AIModel, ModelVersion
from rollouts.services import distribution_create

pytestmark = pytest.mark.django_db


def _running(device, version) -> ModelSlot:
    """The device reports running `version` (what the heartbeat flush writes)."""
    slot, _ = ModelSlot.objects.update_or_create(device=device, ai_model=version.ai_model,
                                                 defaults={"running_version": version})
    return slot


def _slot(device, version_or_model) -> ModelSlot:
    model = getattr(version_or_model, "ai_model", version_or_model)
    return ModelSlot.objects.get(device=device, ai_model=model)


def test_it_writes_only_the_versions_model_slot_and_bumps_its_sequence_once(make_device, make_version):
    device = make_device()
    resnet, magika = make_version("resnet", "1.1.0"), make_version("magika", "2.0.0")
    _running(device, make_version("resnet", "1.0.0"))
    _running(device, magika)

    first = desired_state_set(devices=[device], version=resnet, reason="go")
    again = desired_state_set(devices=[device], version=resnet, reason="go")

    assert (first.changed, again.changed, again.unchanged) == (1, 0, 1)
    slot = _slot(device, resnet)
    assert (slot.version, slot.sequence, slot.reason, slot.source, slot.rollback) == (resnet, 1, "go", "manual",
                                                                                      False)
    assert slot.traceparent.startswith("00-")
    other = _slot(device, magika)
    assert (other.version, other.sequence, other.running_version) == (None, 0, magika)


def test_it_creates_the_slot_of_a_model_the_device_does_not_have(make_device, make_version):
    device = make_device()
    _running(device, make_version("magika", "1.0.0"))
    resnet = make_version("resnet", "1.0.0")

    assert desired_state_set(devices=[device], version=resnet).changed == 1

    assert sorted(device.slots.values_list("ai_model__name", "version__model_id", "sequence")) == [
        ("magika", None, 0), ("resnet", "resnet-1.0.0", 1)]


def test_a_rollback_to_the_same_version_is_a_new_state(make_device, make_version):
    device = make_device()
    version = make_version()
    desired_state_set(devices=[device], version=version)

    assert desired_state_set(devices=[device], version=version, rollback=True).changed == 1
    assert _slot(device, version).sequence == 2


def test_an_older_version_than_the_slot_runs_needs_the_rollback_mark(make_device, make_version):
    old, new = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    ahead, behind = make_device(device_id="ahead"), make_device(device_id="behind")
    _running(ahead, new)
    _running(behind, old)

    with pytest.raises(ApplicationError) as refused:
        desired_state_set(devices=[ahead, behind], version=old)

    assert refused.value.code == "ROLLBACK_NOT_MARKED"
    assert "set rollback to true" in refused.value.message
    assert refused.value.details == [{"field": "devices.ahead", "message": "runs resnet-1.1.0; resnet-1.0.0 is "
                                                                           "older, so it is a rollback"}]
    assert ModelSlot.objects.filter(version__isnull=False).count() == 0  # all or nothing
    assert desired_state_set(devices=[ahead, behind], version=old, rollback=True).changed == 2
    assert _slot(ahead, old).rollback is True


def test_it_refuses_a_model_more_than_the_slot_limit(make_device, make_version):
    full, roomy = make_device(device_id="full"), make_device(device_id="roomy")
    for n in range(MAX_MODELS):
        _running(full, make_version(f"model-{n}", "1.0.0"))
    extra = make_version("one-too-many", "1.0.0")

    with pytest.raises(ApplicationError) as refused:
        desired_state_set(devices=[full, roomy], version=extra)

    assert refused.value.code == "TOO_MANY_MODELS"
    assert refused.value.details == [{"field": "devices.full", "message": f"already has {MAX_MODELS} models"}]
    assert not ModelSlot.objects.filter(ai_model=extra.ai_model).exists()
    # A model the full device already has may still change version.
    assert desired_state_set(devices=[full], version=make_version("model-0", "1.1.0")).changed == 1


def test_a_hand_set_on_a_device_a_distribution_of_that_model_holds_is_refused(make_device, make_version):
    held, free = make_device(device_id="held", memory_mb=4096), make_device(device_id="free", memory_mb=4096)
    old, new, other = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0"), make_version("magika", "1.0.0")
    _running(held, old)
    distribution = distribution_create(version=new, strategy="direct", target={"device_ids": ["held"]},
                                       name="resnet pilot")

    with pytest.raises(ApplicationError) as refused:
        desired_state_set(devices=[held, free], version=old, rollback=True)
    with pytest.raises(ApplicationError):
        desired_model_remove(devices=[held], ai_model=old.ai_model)

    assert (refused.value.status_code, refused.value.code) == (409, "DISTRIBUTION_IN_PROGRESS")
    assert f"resnet pilot (#{distribution.pk})" in refused.value.message
    assert refused.value.details == [{"field": "devices.held", "message": f"held by distribution #{distribution.pk}"}]
    assert not ModelSlot.objects.filter(device=free).exists()
    # Another model on the same device is not held by it.
    assert desired_state_set(devices=[held], version=other).changed == 1


def test_it_skips_decommissioned_and_unfit_devices_with_reasons(make_device, make_version):
    make_device(device_id="fit", memory_mb=4096)
    small = make_device(device_id="small", memory_mb=256)
    make_device(device_id="gone", status=Device.Status.DECOMMISSIONED)
    version = make_version(min_memory_mb=1024)

    result = desired_state_set(devices=Device.objects.all(), version=version)

    assert result.changed == 1
    reasons = {s["device_id"]: s["reason"] for s in result.skipped}
    assert "needs 1024 MB" in reasons["small"] and "decommissioned" in reasons["gone"]
    assert not small.slots.exists()


def test_it_refuses_failed_versions_and_deprecated_ones_unless_rolling_back(make_device, make_version):
    device = make_device()
    version = make_version(status="deprecated")

    with pytest.raises(ApplicationError, match="deprecated"):
        desired_state_set(devices=[device], version=version)
    assert desired_state_set(devices=[device], version=version, rollback=True).changed == 1

    ModelVersion.objects.filter(pk=version.pk).update(status="failed")
    version.refresh_from_db()
    with pytest.raises(ApplicationError, match="failed validation"):
        desired_state_set(devices=[device], version=version, rollback=True)
    ModelVersion.objects.filter(pk=version.pk).update(approved_at=timezone.now(), approval_reason="known issue")
    version.refresh_from_db()
    assert desired_state_set(devices=[device], version=version).changed == 1  # an Admin's override counts


def test_removing_a_model_touches_only_devices_that_have_it_and_is_idempotent(make_device, make_version):
    resnet, magika = make_version("resnet", "1.0.0"), make_version("magika", "1.0.0")
    both, only_magika = make_device(device_id="both"), make_device(device_id="only-magika")
    _running(both, resnet)
    _running(both, magika)
    _running(only_magika, magika)

    first = desired_model_remove(devices=[both, only_magika], ai_model=resnet.ai_model, reason="retired")
    again = desired_model_remove(devices=[both, only_magika], ai_model=resnet.ai_model)

    assert (first.changed, first.unchanged, again.changed) == (1, 1, 0)
    slot = _slot(both, resnet)
    assert (slot.remove, slot.version, slot.sequence, slot.reason) == (True, None, 1, "retired")
    assert not _slot(both, magika).remove and not only_magika.slots.filter(ai_model=resnet.ai_model).exists()
    # Setting a version again after a removal brings the model back.
    assert desired_state_set(devices=[both], version=resnet).changed == 1
    assert (_slot(both, resnet).remove, _slot(both, resnet).sequence) == (False, 2)


def test_a_revert_changes_only_slots_still_at_the_offered_sequence(make_device, make_version):
    old, new = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    kept, moved, fresh = make_device(device_id="kept"), make_device(device_id="moved"), make_device(device_id="fresh")
    for device in (kept, moved):
        _running(device, old)
    now = timezone.now()
    offered = {pk: seq for pk, seq, _running_pk in desired_offer(
        ai_model_id=new.ai_model_id, device_ids=[kept.pk, moved.pk, fresh.pk], version_ids=[new.pk] * 3,
        rollback=False, source="distribution:1", reason="offer", traceparent="", now=now)}
    desired_state_set(devices=[moved], version=make_version("resnet", "1.2.0"))  # an operator moved it on

    reverted = desired_revert(ai_model_id=new.ai_model_id, device_ids=[kept.pk, moved.pk, fresh.pk],
                              version_ids=[old.pk, old.pk, None], expected_sequences=[offered[kept.pk],
                                                                                      offered[moved.pk],
                                                                                      offered[fresh.pk]],
                              source="rollback:1", reason="bad", traceparent="", now=now)

    assert reverted == 2
    assert (_slot(kept, old).version, _slot(kept, old).rollback, _slot(kept, old).sequence) == (old, True, 2)
    assert _slot(moved, old).version.version == "1.2.0"
    assert (_slot(fresh, old).remove, _slot(fresh, old).version) == (True, None)  # it did not have the model


def test_semantic_version_precedence_is_the_same_in_the_database_and_in_python():
    model = AIModel.objects.create(name="ordered", framework="onnx")
    texts = ["1.0.0", "1.0.0-rc.10", "1.0.0-rc.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
             "1.0.0-beta.2", "1.0.0-beta.11", "0.9.12", "1.0.0-1", "10.0.0", "2.0.0"]
    for n, text in enumerate(texts):
        core, _, pre = text.partition("-")
        major, minor, patch = (int(p) for p in core.split("."))
        ModelVersion.objects.create(ai_model=model, version=text, model_id=f"ordered-{text}", major=major, minor=minor,
                                    patch=patch, prerelease=pre, is_release=not pre, storage_key=f"k/{n}",
                                    sha256="a" * 64, size_bytes=1, detected_format="onnx")

    by_database = list(model.versions.order_by("precedence").values_list("version", flat=True))
    by_python = sorted(texts, key=lambda text: ModelVersion.objects.get(version=text, ai_model=model).precedence)

    assert by_database == by_python == [
        "0.9.12", "1.0.0-1", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0-rc.9", "1.0.0-rc.10", "1.0.0", "2.0.0", "10.0.0"]


def test_a_version_desired_on_a_device_cannot_be_deleted(make_device, make_version, client_for):
    version = make_version()
    desired_state_set(devices=[make_device()], version=version)

    response = client_for("Admin").delete(f"/api/v1/models/{version.model_id}")

    assert response.status_code == 409
    assert "desired on 1" in response.json()["error"]["message"]


def _mixed_fleet(make_device, make_version):
    """Devices fit, unfit and gone for a version that needs 1024 MB on a camera; one already has the version."""
    version = make_version("resnet", "2.0.0", min_memory_mb=1024, target_device_type="camera")
    make_device(device_id="mix-fit", device_type="camera", memory_mb=4096)
    make_device(device_id="mix-unknown-memory", device_type="camera")
    make_device(device_id="mix-untyped", memory_mb=2048)
    make_device(device_id="mix-gone", device_type="camera", memory_mb=4096, status=Device.Status.DECOMMISSIONED)
    make_device(device_id="mix-small", device_type="camera", memory_mb=512)
    make_device(device_id="mix-gateway", device_type="gateway", memory_mb=4096)
    there = make_device(device_id="mix-there", device_type="camera", memory_mb=2048)
    make_device(device_id="other-fit", device_type="camera", memory_mb=4096)  # outside the filter
    desired_state_set(devices=[there], version=version)
    return version


def _undone(call):
    """What `call` returns, with its writes rolled back (so the next call starts from the same slots)."""
    savepoint = transaction.savepoint()
    try:
        return call()
    finally:
        transaction.savepoint_rollback(savepoint)


def test_a_filter_gives_the_same_result_as_the_list_of_its_devices_without_loading_them(make_device, make_version):
    version = _mixed_fleet(make_device, make_version)
    matching = Device.objects.filter(device_id__startswith="mix-")

    by_list = _undone(lambda: desired_state_set(devices=list(matching), version=version))
    with mock.patch.object(Device, "from_db", side_effect=AssertionError("a Device instance was loaded")):
        by_filter = desired_state_set(devices=matching, version=version)
        again = desired_state_set(devices=matching, version=version)

    assert by_filter == by_list
    assert (by_filter.matched, by_filter.changed, by_filter.unchanged) == (7, 3, 1)
    assert by_filter.skipped == [
        {"device_id": "mix-gateway", "reason": "mix-gateway is a gateway, resnet-2.0.0 targets camera"},
        {"device_id": "mix-gone", "reason": "mix-gone decommissioned"},
        {"device_id": "mix-small", "reason": "mix-small has 512 MB of memory, resnet-2.0.0 needs 1024 MB"},
    ]
    assert (again.changed, again.unchanged, again.skipped) == (0, 4, by_filter.skipped)  # runs twice, same result
    assert sorted(ModelSlot.objects.filter(version=version).values_list("device__device_id", flat=True)) == [
        "mix-fit", "mix-there", "mix-unknown-memory", "mix-untyped"]


def test_removing_by_a_filter_gives_the_same_result_as_the_list_of_its_devices(make_device, make_version):
    version = _mixed_fleet(make_device, make_version)
    matching = Device.objects.filter(device_id__startswith="mix-")
    desired_state_set(devices=matching, version=version)

    by_list = _undone(lambda: desired_model_remove(devices=list(matching), ai_model=version.ai_model))
    by_filter = desired_model_remove(devices=matching, ai_model=version.ai_model)

    assert by_filter == by_list
    assert (by_filter.matched, by_filter.changed, by_filter.unchanged) == (7, 4, 2)
    assert by_filter.skipped == [{"device_id": "mix-gone", "reason": "mix-gone decommissioned"}]


def test_refusals_over_a_filter_name_the_devices(make_device, make_version):
    old, new = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    ahead, behind, full = (make_device(device_id=f"f-{name}") for name in ("ahead", "behind", "full"))
    _running(ahead, new)
    _running(behind, old)
    for n in range(MAX_MODELS):
        _running(full, make_version(f"model-{n}", "1.0.0"))
    matching = Device.objects.filter(device_id__startswith="f-")

    with pytest.raises(ApplicationError) as older:
        desired_state_set(devices=matching, version=old)
    with pytest.raises(ApplicationError) as too_many:
        desired_state_set(devices=matching, version=old, rollback=True)
    distribution = distribution_create(version=new, strategy="direct", target={"device_ids": ["f-behind"]},
                                       name="resnet pilot")
    with pytest.raises(ApplicationError) as held:
        desired_state_set(devices=matching, version=old, rollback=True)
    with pytest.raises(ApplicationError) as held_removal:
        desired_model_remove(devices=matching, ai_model=old.ai_model)

    assert (older.value.code, older.value.details) == ("ROLLBACK_NOT_MARKED", [
        {"field": "devices.f-ahead", "message": "runs resnet-1.1.0; resnet-1.0.0 is older, so it is a rollback"}])
    assert (too_many.value.code, too_many.value.details) == ("TOO_MANY_MODELS", [
        {"field": "devices.f-full", "message": f"already has {MAX_MODELS} models"}])
    for refused in (held, held_removal):
        assert (refused.value.status_code, refused.value.code) == (409, "DISTRIBUTION_IN_PROGRESS")
        assert f"resnet pilot (#{distribution.pk})" in refused.value.message
        assert refused.value.details == [{"field": "devices.f-behind",
                                          "message": f"held by distribution #{distribution.pk}"}]
    assert not ModelSlot.objects.filter(version=old).exists()  # all or nothing
