"""POST /api/v1/distributions: the automatic strategy, every setting, and every refusal in the API error format."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from hotswap.accounts.roles import Role
from models_app.models import ModelVersion
from rollouts.models import Assignment, Distribution
from tests.rollouts.apis.conftest import create
from tests.test_error_format import assert_error_shape


def post(client, body):
    return client.post("/api/v1/distributions", body, format="json")


@pytest.fixture
def versions(make_version):
    return {"old": make_version(version="1.0.0"), "new": make_version(version="1.1.0"),
            "next": make_version(version="1.2.0")}


def test_it_creates_a_distribution_and_explains_the_strategy_it_chose(operator, make_fleet, versions):
    make_fleet({"eu": 20, "us": 10}, running=versions["old"])

    body = create(operator, version="resnet-1.1.0", name="Spring update")

    assert body["status"] == "scheduled" and body["name"] == "Spring update"
    assert (body["model"], body["version"], body["version_b"]) == ("resnet", "resnet-1.1.0", None)
    assert body["strategy"] == "canary"
    assert "30 target devices" in body["strategy_reason"]
    assert body["config"] == {"percent": 10.0, "soak": "PT30M", "gate": "automatic", "final_soak": "PT0S"}
    assert body["device_count"] == 30
    assert [(s["index"], s["kind"], s["status"], s["device_count"]) for s in body["stages"]] == [
        (0, "canary", "pending", 3), (1, "rest", "pending", 27)]
    assert body["created_by"] == "olga" and body["rollback_policy"] == "automatic"
    assert body["success_criteria"]["max_error_rate"] == 0.05
    assert Distribution.objects.get(pk=body["id"]).assignments.count() == 30


def test_it_takes_every_setting_it_documents(operator, make_fleet, versions):
    make_fleet({"eu": 10, "us": 10})
    start = timezone.now() + timedelta(hours=2)

    body = create(
        operator, version="resnet-1.1.0", strategy="progressive",
        strategy_config={"stages": [{"percent": 50, "soak": "PT1M"}, {"percent": 100, "gate": "manual"}]},
        target={"regions": ["eu"], "min_memory_mb": 1024}, success_criteria={"max_error_rate": 0.01},
        rollback_policy="manual", scheduled_at=start.isoformat(), install_timeout_seconds=120, max_attempts=5,
        failure_threshold=0.25,
    )

    assert body["strategy"] == "progressive" and body["strategy_reason"] == "chosen by the operator"
    assert body["target"] == {"regions": ["eu"], "min_memory_mb": 1024}
    assert body["success_criteria"]["max_error_rate"] == 0.01
    assert (body["rollback_policy"], body["install_timeout_seconds"], body["max_attempts"],
            body["failure_threshold"]) == ("manual", 120, 5, 0.25)
    assert body["scheduled_at"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
    assert [(s["percent"], s["soak_seconds"], s["gate"], s["device_count"]) for s in body["stages"]] == [
        (50.0, 60, "automatic", 5), (100.0, 1800, "manual", 5)]


def test_it_runs_an_ab_test_when_two_versions_are_given(operator, make_fleet, versions):
    make_fleet({"eu": 20})

    body = create(operator, version="resnet-1.1.0", version_b="resnet-1.2.0", strategy_config={"split": 50})

    assert body["strategy"] == "ab_test" and "two versions" in body["strategy_reason"]
    assert body["version_b"] == "resnet-1.2.0"
    shipped = Assignment.objects.filter(distribution_id=body["id"]).values_list("version__model_id", flat=True)
    assert sorted(set(shipped)) == ["resnet-1.1.0", "resnet-1.2.0"]


@pytest.mark.parametrize("field", ["version", "version_b"])
def test_it_answers_404_for_a_version_that_does_not_exist(operator, make_fleet, versions, field):
    make_fleet({"eu": 5})
    body = {"version": "resnet-1.1.0", "version_b": "resnet-1.2.0", field: "resnet-9.9.9"}

    error = assert_error_shape(post(operator, body), 404, "MODEL_NOT_FOUND")

    assert "resnet-9.9.9" in error["message"]
    assert error["details"][0]["field"] == field
    assert not Distribution.objects.exists()


@pytest.mark.parametrize(("status", "reason"), [
    (ModelVersion.Status.VALIDATING, "still being validated"),
    (ModelVersion.Status.FAILED, "failed validation"),
    (ModelVersion.Status.NEEDS_APPROVAL, "an Admin must approve it"),
    (ModelVersion.Status.DEPRECATED, "deprecated"),
])
def test_it_refuses_a_version_that_may_not_ship_and_says_why(operator, make_fleet, make_version, status, reason):
    make_fleet({"eu": 5})
    make_version(version="2.0.0", status=status)

    error = assert_error_shape(post(operator, {"version": "resnet-2.0.0"}), 400, "VERSION_NOT_DISTRIBUTABLE")

    assert reason in error["message"]
    assert error["details"] == [{"field": "version", "message": error["message"]}]
    assert not Distribution.objects.exists()


def test_it_ships_a_failed_version_an_admin_approved(operator, make_fleet, make_user, make_version):
    make_fleet({"eu": 5})
    make_version(version="2.0.0", status=ModelVersion.Status.FAILED, approved_at=timezone.now(),
                 approved_by=make_user(Role.ADMIN), approval_reason="accepted risk")

    assert create(operator, version="resnet-2.0.0")["device_count"] == 5


@pytest.mark.parametrize(("body", "field"), [
    ({"strategy": "big-bang"}, "strategy"),
    ({"strategy": "canary", "strategy_config": {"soak": "30 minutes"}}, "strategy_config.soak"),
    ({"strategy": "canary", "strategy_config": {"percent": 100}}, "strategy_config.percent"),
    ({"strategy": "progressive", "strategy_config": {"stages": [{"percent": 50}]}}, "strategy_config.stages"),
    ({"strategy": "regional", "strategy_config": {"regions": ["mars"]}}, "strategy_config.regions"),
    ({"strategy": "direct", "strategy_config": {"percent": 5}}, "strategy_config.percent"),
    ({"strategy_config": "PT5M"}, "strategy_config"),
    ({"target": {"colour": ["red"]}}, "target.colour"),
    ({"target": {"regions": "eu"}}, "target.regions"),
    ({"target": {"min_memory_mb": -1}}, "target.min_memory_mb"),
    ({"success_criteria": {"max_error_rate": 2}}, "success_criteria.max_error_rate"),
    ({"success_criteria": {"p99": 10}}, "success_criteria.p99"),
    ({"rollback_policy": "sometimes"}, "rollback_policy"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"failure_threshold": 1.5}, "failure_threshold"),
    ({"scheduled_at": "tomorrow"}, "scheduled_at"),
    ({"model": "resnet"}, "model"),
    ({"strategy": "canary", "version_b": "resnet-1.2.0"}, "version_b"),
    ({"strategy": "ab_test"}, "version_b"),
])
def test_it_names_the_field_of_every_invalid_setting(operator, make_fleet, versions, body, field):
    make_fleet({"eu": 20, "us": 5})

    error = assert_error_shape(post(operator, {"version": "resnet-1.1.0", **body}), 400, "VALIDATION_ERROR")

    assert field in [detail["field"] for detail in error["details"]], error
    assert not Distribution.objects.exists()


def test_an_ab_test_needs_two_different_versions(operator, make_fleet, versions):
    make_fleet({"eu": 5})

    response = post(operator, {"version": "resnet-1.1.0", "version_b": "resnet-1.1.0"})

    error = assert_error_shape(response, 400, "VERSION_NOT_DISTRIBUTABLE")
    assert error["details"] == [{"field": "version_b", "message": "An A/B test needs two different versions."}]


def test_it_requires_a_version(operator):
    error = assert_error_shape(post(operator, {}), 400, "VALIDATION_ERROR")

    assert error["details"] == [{"field": "version", "message": "This field is required."}]


def test_it_refuses_a_target_that_matches_no_device(operator, make_fleet, versions):
    make_fleet({"eu": 5})

    error = assert_error_shape(post(operator, {"version": "resnet-1.1.0", "target": {"regions": ["us"]}}), 400,
                               "NO_TARGET_DEVICES")

    assert error["details"][0]["field"] == "target"


def test_it_refuses_devices_of_a_running_distribution_and_lists_the_conflict(operator, make_fleet, versions):
    make_fleet({"eu": 10, "us": 10})
    first = create(operator, version="resnet-1.1.0", name="EU first", target={"regions": ["eu"]})

    error = assert_error_shape(post(operator, {"version": "resnet-1.2.0"}), 409, "DISTRIBUTION_IN_PROGRESS")

    assert error["conflicts"] == [{"distribution": first["id"], "name": "EU first", "devices": 10}]
    assert error["details"] == [{"field": "target", "message": f"#{first['id']}: 10 device(s)"}]
    assert "EU first" in error["message"]
    assert Distribution.objects.count() == 1
    # Devices the first one does not hold are free.
    assert create(operator, version="resnet-1.2.0", target={"regions": ["us"]})["device_count"] == 10


def test_devices_of_a_finished_distribution_are_free_again(operator, make_fleet, versions):
    make_fleet({"eu": 5})
    first = create(operator, version="resnet-1.1.0")
    operator.post(f"/api/v1/distributions/{first['id']}/abort", {}, format="json")

    assert create(operator, version="resnet-1.2.0")["device_count"] == 5


@override_settings(ROLLOUT_MAX_CONCURRENT=1)
def test_it_refuses_more_open_distributions_than_the_limit(operator, make_fleet, versions):
    make_fleet({"eu": 5, "us": 5})
    create(operator, version="resnet-1.1.0", target={"regions": ["eu"]})

    error = assert_error_shape(post(operator, {"version": "resnet-1.1.0", "target": {"regions": ["us"]}}), 409,
                               "TOO_MANY_DISTRIBUTIONS")

    assert "limit is 1" in error["message"]


def test_it_rate_limits_creation_per_user(operator, client_for, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "distribution_create": "2/hour"}
    for _ in range(2):
        assert post(operator, {}).status_code == 400

    response = post(operator, {})

    assert_error_shape(response, 429, "RATE_LIMITED")
    assert int(response["Retry-After"]) > 0
    assert post(client_for(Role.OPERATOR), {}).status_code == 400  # another user has their own budget


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MODEL_DEVELOPER])
def test_readers_cannot_create(client_for, make_fleet, versions, role):
    make_fleet({"eu": 5})

    assert_error_shape(post(client_for(role), {"version": "resnet-1.1.0"}), 403, "PERMISSION_DENIED")
    assert not Distribution.objects.exists()


def test_a_model_no_device_has_needs_a_target_and_an_ab_test_needs_one_model(operator, make_fleet, make_version):
    make_fleet({"eu": 5})  # they run resnet only
    yolo = make_version("yolo", "1.0.0")

    missing = assert_error_shape(post(operator, {"version": yolo.model_id}), 400, "INSTALL_NEEDS_TARGET")
    across = assert_error_shape(post(operator, {"version": make_version("resnet", "1.1.0").model_id,
                                                "version_b": make_version("magika", "1.0.0").model_id}),
                                400, "AB_TEST_ACROSS_MODELS")
    installed = create(operator, version=yolo.model_id, target={"regions": ["eu"]})

    assert missing["details"] == [{"field": "target", "message": "Required to install yolo on new devices."}]
    assert across["details"] == [{"field": "version_b", "message": "Must be a version of resnet."}]
    assert (installed["model"], installed["device_count"]) == ("yolo", 5)
    assert Distribution.objects.count() == 1
