"""GET /api/v1/distributions/{id}/metrics: the new version against its baseline over time."""

from datetime import timedelta

from django.utils import timezone

from devices.models import MetricWindow
from hotswap.accounts.roles import Role
from rollouts.models import Assignment
from rollouts.orchestrator import distribution_advance
from tests.rollouts.apis.conftest import create
from tests.rollouts.conftest import report_installs
from tests.test_error_format import assert_error_shape


def _window(assignment, version, *, at, latency):
    return MetricWindow(device_id=assignment.device_id, version=version, model_name=version.ai_model.name,
                        model_version=version.version, window_start=at, window_end=at + timedelta(seconds=30),
                        inference_count=100, error_count=1, latency_p50_ms=latency / 2, latency_p95_ms=latency * 0.9,
                        latency_p99_ms=latency)


def test_it_draws_the_new_version_against_the_baseline_per_region(operator, client_for, make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_version(version="1.1.0")
    make_fleet({"eu": 8, "us": 2}, running=old)
    now = timezone.now() - timedelta(minutes=5)
    pk = create(operator, version="resnet-1.1.0", strategy="canary", strategy_config={"percent": 50},
                scheduled_at=now.isoformat())["id"]
    distribution_advance(distribution_id=pk, now=now)
    report_installs(Assignment.objects.filter(distribution_id=pk, state="offered").select_related("version__ai_model"))
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    rows = []
    for assignment in Assignment.objects.filter(distribution_id=pk).select_related(
            "version__ai_model", "previous_version__ai_model"):
        on_new = assignment.stage.index == 0
        version = assignment.version if on_new else assignment.previous_version
        rows.append(_window(assignment, version, at=minute, latency=30.0 if on_new else 20.0))
    MetricWindow.objects.bulk_create(rows)

    viewer = client_for(Role.VIEWER)
    response = viewer.get(f"/api/v1/distributions/{pk}/metrics")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["scope"] == "distribution"
    by_role = {serie["role"]: serie for serie in body["series"]}
    assert by_role["new"]["version"] == "resnet-1.1.0" and by_role["baseline"]["version"] == "resnet-1.0.0"
    assert by_role["new"]["points"][0]["latency_p99_ms"] == 30.0
    assert by_role["baseline"]["points"][0]["inferences"] == 500
    assert [stage["index"] for stage in body["stages"]] == [0, 1]
    assert body["rolled_back_at"] is None

    per_region = viewer.get(f"/api/v1/distributions/{pk}/metrics?group_by=region").json()
    assert {(s["role"], s["group"]) for s in per_region["series"]} <= {
        ("new", "eu"), ("new", "us"), ("baseline", "eu"), ("baseline", "us")}
    assert sum(p["inferences"] for s in per_region["series"] for p in s["points"]) == 1000


def test_bad_parameters_and_unknown_ids_are_refused(operator, make_fleet, make_version):
    make_version(version="1.1.0")
    make_fleet({"eu": 2})
    pk = create(operator, version="resnet-1.1.0")["id"]
    response = operator.get(f"/api/v1/distributions/{pk}/metrics?group_by=colour&interval_seconds=5")
    assert_error_shape(response, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in response.json()["error"]["details"]} == {"group_by", "interval_seconds"}
    assert_error_shape(operator.get("/api/v1/distributions/999999/metrics"), 404, "DISTRIBUTION_NOT_FOUND")
