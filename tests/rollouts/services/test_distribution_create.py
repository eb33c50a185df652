"""distribution_create: target resolution, stage placement, refusals that leave nothing behind."""

from collections import Counter

import pytest
from django.test import override_settings

from devices.models import Device, ModelSlot
from hotswap.exceptions import ApplicationError
from rollouts.models import Assignment, Distribution, Stage, Transition
from rollouts.services import DistributionInProgress, distribution_create


def _stage_of(distribution) -> dict[str, int]:
    return dict(Assignment.objects.filter(distribution=distribution).values_list("device__device_id", "stage__index"))


def test_it_places_devices_in_stages_of_the_planned_sizes(make_fleet, make_version):
    make_fleet({"eu": 120, "us": 60, "ap": 20})
    distribution = distribution_create(version=make_version(), strategy="progressive")
    assert distribution.device_count == 200
    sizes = list(distribution.stages.values_list("device_count", flat=True))
    # Cumulative 10 / 25 / 50 / 100 % of 200 devices.
    assert sizes == [20, 30, 50, 100]
    assert Transition.objects.get(distribution=distribution).to_status == "scheduled"


def test_each_stage_covers_regions_and_device_types_in_proportion(make_fleet, make_version):
    make_fleet({"eu": 100, "us": 50, "ap": 50}, device_type="camera")
    make_fleet({"eu": 100, "us": 50, "ap": 50}, device_type="gateway")
    distribution = distribution_create(version=make_version(), strategy="canary", config={"percent": 10})
    canary = Counter(Assignment.objects.filter(distribution=distribution, stage__index=0)
                     .values_list("device__region", "device__device_type"))
    # 40 canary devices over strata of 100/50/50 per type: 10/5/5 each, give or take one.
    for (region, _type), count in canary.items():
        expected = {"eu": 10, "us": 5, "ap": 5}[region]
        assert abs(count - expected) <= 1, canary
    assert len(canary) == 6


def test_placement_does_not_follow_creation_order(make_fleet, make_version):
    devices = make_fleet({"eu": 100})
    distribution = distribution_create(version=make_version(), strategy="canary", config={"percent": 10})
    canary = sorted(d for d, stage in _stage_of(distribution).items() if stage == 0)
    assert len(canary) == 10
    in_order = [d.device_id for d in devices]
    assert canary not in (in_order[:10], in_order[-10:], in_order[::10])


def test_the_same_distribution_id_always_places_the_same_devices(make_fleet, make_version):
    from rollouts import planning

    make_fleet({"eu": 50, "us": 50})
    distribution = distribution_create(version=make_version(), strategy="canary", config={"percent": 20})
    before = _stage_of(distribution)
    stages = list(distribution.stages.all())
    Assignment.objects.filter(distribution=distribution).delete()
    sql = planning.target_sql(distribution.target, [distribution.version])
    planning.assignments_plan(distribution=distribution, stages=stages, placement="percent", sql=sql, count=100)
    assert _stage_of(distribution) == before


def test_it_targets_by_region_type_tags_memory_and_ids(make_fleet, make_version, make_device):
    make_fleet({"eu": 5, "us": 5})
    tagged = make_device(device_id="tagged-1", region="eu", device_type="camera", tags=["lobby", "gen2"],
                         memory_mb=8192)
    make_device(device_id="tagged-2", region="eu", device_type="camera", tags=["lobby"], memory_mb=8192)
    make_device(device_id="small-1", region="eu", device_type="camera", tags=["lobby", "gen2"], memory_mb=512)
    distribution = distribution_create(
        version=make_version(), target={"regions": ["eu"], "device_types": ["camera"], "tags": ["gen2", "lobby"],
                                        "min_memory_mb": 1024})
    assert list(distribution.assignments.values_list("device_id", flat=True)) == [tagged.pk]
    assert distribution.strategy == "direct"
    assert "< 10" in distribution.strategy_reason


def test_devices_that_cannot_run_the_version_are_left_out(make_fleet, make_version, make_device):
    make_fleet({"eu": 3})
    make_device(device_id="tiny", region="eu", memory_mb=256)
    version = make_version(min_memory_mb=1024)
    distribution = distribution_create(version=version)
    assert "tiny" not in set(distribution.assignments.values_list("device__device_id", flat=True))
    assert distribution.device_count == 3


def test_decommissioned_devices_are_never_targeted(make_fleet, make_version):
    devices = make_fleet({"eu": 3})
    Device.objects.filter(pk=devices[0].pk).update(status="decommissioned")
    assert distribution_create(version=make_version()).device_count == 2


@pytest.mark.parametrize(("status", "approved", "words"), [
    ("failed", False, "failed validation"),
    ("needs_approval", False, "must approve"),
    ("validating", False, "still being validated"),
    ("deprecated", False, "deprecated"),
])
def test_it_refuses_versions_that_may_not_ship(make_fleet, make_version, status, approved, words):
    make_fleet({"eu": 3})
    with pytest.raises(ApplicationError) as exc:
        distribution_create(version=make_version(status=status))
    assert exc.value.code == "VERSION_NOT_DISTRIBUTABLE"
    assert words in exc.value.message
    assert not Distribution.objects.exists()


def test_a_failed_version_an_admin_approved_may_ship(make_fleet, make_version, make_user):
    from django.utils import timezone

    make_fleet({"eu": 3})
    version = make_version(status="failed", approved_at=timezone.now(), approval_reason="latency is fine on NPUs")
    assert distribution_create(version=version).device_count == 3


def test_an_empty_target_set_is_refused(make_fleet, make_version):
    make_fleet({"eu": 3})
    with pytest.raises(ApplicationError) as exc:
        distribution_create(version=make_version(), target={"regions": ["mars"]})
    assert exc.value.code == "NO_TARGET_DEVICES"


def test_an_overlap_with_a_running_distribution_is_refused_naming_it(make_fleet, make_version):
    make_fleet({"eu": 20, "us": 20})
    first = distribution_create(version=make_version(), target={"regions": ["eu"]}, name="eu rollout")
    second = make_version(version="2.0.0")
    with pytest.raises(DistributionInProgress) as exc:
        distribution_create(version=second, name="everyone")
    assert exc.value.status_code == 409
    assert exc.value.extra["conflicts"] == [{"distribution": first.pk, "name": "eu rollout", "devices": 20}]
    assert Distribution.objects.count() == 1
    assert Stage.objects.filter(distribution__name="everyone").count() == 0
    # Disjoint targets run side by side.
    assert distribution_create(version=second, target={"regions": ["us"]}).device_count == 20


@override_settings(ROLLOUT_MAX_CONCURRENT=2)
def test_the_number_of_open_distributions_is_capped(make_fleet, make_version):
    make_fleet({"a": 2, "b": 2, "c": 2})
    version = make_version()
    distribution_create(version=version, target={"regions": ["a"]})
    distribution_create(version=version, target={"regions": ["b"]})
    with pytest.raises(ApplicationError) as exc:
        distribution_create(version=version, target={"regions": ["c"]})
    assert exc.value.code == "TOO_MANY_DISTRIBUTIONS"


def test_an_ab_test_splits_the_fleet_between_the_two_versions(make_fleet, make_version):
    make_fleet({"eu": 50, "us": 50})
    a, b = make_version(version="1.0.0"), make_version(version="1.1.0")
    distribution = distribution_create(version=a, version_b=b, config={"split": 30})
    assert distribution.strategy == "ab_test"
    split = Counter(distribution.assignments.values_list("version_id", flat=True))
    assert split == {a.pk: 30, b.pk: 70}


def test_bad_target_and_criteria_are_refused_with_every_problem(make_fleet, make_version):
    make_fleet({"eu": 3})
    version = make_version()
    with pytest.raises(ApplicationError) as exc:
        distribution_create(version=version, target={"regions": "eu", "colour": ["red"]})
    assert {d["field"] for d in exc.value.details} == {"target.regions", "target.colour"}
    with pytest.raises(ApplicationError) as exc:
        distribution_create(version=version, success_criteria={"max_error_rate": 2})
    assert exc.value.details[0]["field"] == "success_criteria.max_error_rate"


def test_a_version_in_a_distributions_history_cannot_be_deleted(make_fleet, make_version):
    from models_app.services import model_version_delete

    old = make_version(version="1.0.0")
    make_fleet({"eu": 2}, running=old)
    new = make_version(version="1.1.0")
    distribution = distribution_create(version=new, strategy="direct")
    ModelSlot.objects.update(running_version=None)
    for version in (new, old):
        with pytest.raises(ApplicationError) as exc:
            model_version_delete(model_version=version, actor=None)
        assert exc.value.code == "VERSION_IN_USE"
        assert f"#{distribution.pk}" in exc.value.message
