"""Rollouts per model: a distribution touches one model's slots, targets the devices that have it, and only
conflicts with distributions of the same model."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from devices.models import ModelSlot
from hotswap.exceptions import ApplicationError
from rollouts import assignment_states
from rollouts.models import Assignment
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create, distribution_rollback, model_version_rollback
from tests.rollouts.conftest import offered, report_installs, slots_run


@pytest.fixture(autouse=True)
def _soak_judge():
    with override_settings(ROLLOUT_JUDGE="rollouts.judges.soak_judge"):
        yield


@pytest.fixture
def two_models(make_fleet, make_version):
    """20 devices running resnet-1.0.0 and magika-1.0.0 side by side, 5 more running only resnet."""
    resnet, magika = make_version("resnet", "1.0.0"), make_version("magika", "1.0.0")
    both = make_fleet({"eu": 20}, running=[resnet, magika])
    only_resnet = make_fleet({"eu": 5}, running=resnet)
    return {"resnet": resnet, "magika": magika, "both": both, "only_resnet": only_resnet}


def _slots(model) -> dict[int, tuple]:
    return {s.device_id: (s.version_id, s.sequence, s.rollback, s.remove)
            for s in ModelSlot.objects.filter(ai_model=model.ai_model)}


def test_a_distribution_changes_only_its_models_slot_and_rolls_back_only_that(two_models, make_version):
    magika_before = _slots(two_models["magika"])
    new = make_version("resnet", "1.1.0")
    now = timezone.now()
    distribution = distribution_create(version=new, strategy="direct", now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)

    assert distribution.ai_model == new.ai_model and distribution.device_count == 25
    assert set(Assignment.objects.filter(distribution=distribution).values_list("ai_model", flat=True)) == {
        new.ai_model_id}
    assert {v for v, _seq, _rb, _rm in _slots(new).values()} == {new.pk}
    assert _slots(two_models["magika"]) == magika_before
    assert set(Assignment.objects.values_list("previous_version", flat=True)) == {two_models["resnet"].pk}

    report_installs(offered(distribution))
    distribution.refresh_from_db()
    assert distribution_rollback(distribution=distribution, reason="regression") == 25

    assert {(v, rb) for v, _seq, rb, _rm in _slots(new).values()} == {(two_models["resnet"].pk, True)}
    assert _slots(two_models["magika"]) == magika_before  # every device, the other model untouched


def test_without_a_target_only_devices_that_have_the_model_are_upgraded(two_models, make_version):
    distribution = distribution_create(version=make_version("magika", "1.1.0"), strategy="direct")

    targeted = set(Assignment.objects.filter(distribution=distribution).values_list("device_id", flat=True))
    assert targeted == {d.pk for d in two_models["both"]}
    assert not ModelSlot.objects.filter(device__in=two_models["only_resnet"], ai_model=distribution.ai_model).exists()


def test_installing_a_model_no_device_has_needs_an_explicit_target(two_models, make_version):
    yolo = make_version("yolo", "1.0.0")

    with pytest.raises(ApplicationError) as refused:
        distribution_create(version=yolo, strategy="direct")
    assert refused.value.code == "INSTALL_NEEDS_TARGET"
    assert "name them in the target" in refused.value.message

    chosen = [d.device_id for d in two_models["only_resnet"][:3]]
    now = timezone.now()
    distribution = distribution_create(version=yolo, strategy="direct", target={"device_ids": chosen}, now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    installed = ModelSlot.objects.filter(ai_model=yolo.ai_model)
    assert sorted(installed.values_list("device__device_id", flat=True)) == sorted(chosen)
    resnet_before = _slots(two_models["resnet"])
    distribution.refresh_from_db()

    distribution_rollback(distribution=distribution, reason="not wanted")

    # They did not have yolo before: going back means removing it; resnet stays as it was.
    assert set(installed.values_list("remove", "version")) == {(True, None)}
    assert _slots(two_models["resnet"]) == resnet_before


def test_distributions_of_different_models_run_on_the_same_devices_but_not_two_of_one_model(two_models,
                                                                                            make_version):
    resnet = distribution_create(version=make_version("resnet", "1.1.0"), strategy="direct", name="resnet 1.1")
    magika = distribution_create(version=make_version("magika", "1.1.0"), strategy="direct")

    assert magika.device_count == 20
    with pytest.raises(ApplicationError) as refused:
        distribution_create(version=make_version("resnet", "1.2.0"), strategy="direct")
    assert (refused.value.status_code, refused.value.code) == (409, "DISTRIBUTION_IN_PROGRESS")
    assert f"open distribution of resnet: resnet 1.1 (#{resnet.pk}, 25 devices)" in refused.value.message
    assert f"#{magika.pk}" not in refused.value.message


def test_an_ab_test_across_two_models_is_refused(two_models, make_version):
    with pytest.raises(ApplicationError) as refused:
        distribution_create(version=make_version("resnet", "1.1.0"), version_b=make_version("magika", "1.1.0"),
                            strategy="ab_test")

    assert refused.value.code == "AB_TEST_ACROSS_MODELS"
    assert refused.value.details == [{"field": "version_b", "message": "Must be a version of resnet."}]


def test_a_version_rollback_goes_to_slots_running_or_assigned_a_later_version(make_fleet, make_version):
    v1, v2 = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    on_v1, on_v2 = make_fleet({"eu": 3}, running=v1), make_fleet({"eu": 4}, running=v2)
    assigned_v2 = make_fleet({"eu": 2}, running=v1)
    ModelSlot.objects.filter(device__in=assigned_v2).update(version=v2, sequence=1)
    other_model = make_fleet({"eu": 2}, running=make_version("magika", "2.0.0"))

    distribution = model_version_rollback(version=v1)

    targeted = set(Assignment.objects.filter(distribution=distribution).values_list("device_id", flat=True))
    assert targeted == {d.pk for d in on_v2 + assigned_v2}
    assert not targeted & {d.pk for d in on_v1 + other_model}


def test_a_late_device_joins_only_the_distribution_of_its_model(two_models, make_version, make_device):
    now = timezone.now()
    resnet = distribution_create(version=make_version("resnet", "1.1.0"), strategy="canary",
                                 config={"soak": "PT0S"}, now=now)
    magika = distribution_create(version=make_version("magika", "1.1.0"), strategy="canary",
                                 config={"soak": "PT0S"}, now=now)
    for distribution in (resnet, magika):
        distribution_advance(distribution_id=distribution.pk, now=now)
    late = make_device(device_id="late", region="eu", memory_mb=4096)
    slots_run([late], two_models["magika"])
    for distribution in (resnet, magika):
        report_installs(offered(distribution, 0))
        distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=5))

    assert list(Assignment.objects.filter(device=late).values_list("distribution", "state")) == [
        (magika.pk, "offered")]
    assert list(late.slots.values_list("ai_model__name", "version__version")) == [("magika", "1.1.0")]


def test_the_assignment_state_map_covers_every_state_and_the_bulk_moves():
    assert set(assignment_states.TRANSITIONS) == set(Assignment.State)
    assert set(assignment_states.sources_of(Assignment.State.TIMED_OUT)) == set(assignment_states.IN_FLIGHT)
    assert set(assignment_states.UNFINISHED) == {Assignment.State.PENDING, *assignment_states.IN_FLIGHT}
    for state in assignment_states.REPORT_STATES.values():
        assert set(assignment_states.sources_of(state)) >= set(assignment_states.IN_FLIGHT) - {state}


def test_an_install_skips_devices_that_already_run_the_most_models_a_device_may(make_fleet, make_version):
    from hotswap_device.protocol import MAX_MODELS

    full, roomy = make_fleet({"eu": 1}, running=None)[0], make_fleet({"eu": 1}, running=None)[0]
    slots_run([full], make_version("model-0", "1.0.0"))
    for n in range(1, MAX_MODELS):
        slots_run([full], make_version(f"model-{n}", "1.0.0"))
    yolo = make_version("yolo", "1.0.0")

    distribution = distribution_create(version=yolo, strategy="direct",
                                       target={"device_ids": [full.device_id, roomy.device_id]})

    assert list(Assignment.objects.filter(distribution=distribution).values_list("device", flat=True)) == [roomy.pk]
    # An upgrade of a model the full device has still reaches it.
    upgrade = distribution_create(version=make_version("model-0", "1.1.0"), strategy="direct")
    assert list(Assignment.objects.filter(distribution=upgrade).values_list("device", flat=True)) == [full.pk]
