"""GET /api/v1/distributions/{id}/status: progress per stage, the current stage and what it waits for."""

from datetime import timedelta

from django.utils import timezone

from devices.models import MetricWindow
from hotswap.accounts.roles import Role
from models_app.models import ModelVersion
from rollouts.models import Distribution
from rollouts.orchestrator import distribution_advance
from tests.rollouts.apis.conftest import create
from tests.rollouts.conftest import offered, report_installs
from tests.test_error_format import assert_error_shape


def status_of(client, distribution_id: int) -> dict:
    response = client.get(f"/api/v1/distributions/{distribution_id}/status")
    assert response.status_code == 200, response.content
    return response.json()


def test_it_follows_a_distribution_created_through_the_api(operator, client_for, make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_version(version="1.1.0")
    make_fleet({"eu": 15, "us": 5}, running=old)
    viewer = client_for(Role.VIEWER)
    now = timezone.now() - timedelta(minutes=2)  # the orchestrator's clock; telemetry below is in the past
    created = create(operator, version="resnet-1.1.0", strategy="canary",
                     strategy_config={"percent": 20, "soak": "PT10M"}, scheduled_at=now.isoformat())
    pk = created["id"]

    before = status_of(viewer, pk)
    assert (before["status"], before["current_stage"]) == ("scheduled", 0)
    assert before["waiting_for"].startswith("its scheduled start")
    assert before["progress"]["targeted"] == 20 and before["progress"]["pending"] == 20

    distribution_advance(distribution_id=pk, now=now)
    installing = status_of(viewer, pk)
    assert installing["status"] == "running"
    assert installing["stages"][0]["status"] == "installing"
    assert installing["stages"][0]["progress"]["offered"] == 4
    assert installing["waiting_for"] == "installs on 4 device(s) of Canary 20 %"

    canary = offered(Distribution.objects.get(pk=pk), 0)
    report_installs(canary[:3])
    report_installs(canary[3:], "failed", error="out of memory")
    distribution_advance(distribution_id=pk, now=now + timedelta(seconds=5))
    retrying = status_of(viewer, pk)
    stage = retrying["stages"][0]["progress"]
    # The failed install has attempts left: it is offered again.
    assert (stage["targeted"], stage["active"], stage["installing"], stage["failed"]) == (4, 3, 1, 0)
    assert stage["success_rate"] == 1.0
    assert retrying["progress"]["active"] == 3 and retrying["progress"]["pending"] == 16
    assert retrying["waiting_for"] == "installs on 1 device(s) of Canary 20 %"

    report_installs(offered(Distribution.objects.get(pk=pk), 0))
    distribution_advance(distribution_id=pk, now=now + timedelta(seconds=10))
    soaking = status_of(viewer, pk)
    assert soaking["stages"][0]["status"] == "soaking" and soaking["stages"][0]["progress"]["active"] == 4
    assert soaking["waiting_for"].startswith("the soak of Canary 20 % (")
    assert soaking["live_metrics"]["new"]["devices"] == 0

    new = ModelVersion.objects.get(model_id="resnet-1.1.0")
    MetricWindow.objects.bulk_create([
        MetricWindow(device_id=a.device_id, version=new, model_name="resnet", model_version="1.1.0",
                     window_start=now + timedelta(seconds=20), window_end=now + timedelta(seconds=50),
                     inference_count=100, error_count=1, latency_p50_ms=10, latency_p95_ms=18, latency_p99_ms=20)
        for a in Distribution.objects.get(pk=pk).assignments.filter(stage__index=0)])
    live = status_of(viewer, pk)["live_metrics"]
    assert live["stage"] == 0
    assert live["new"] == {"devices": 4, "inferences": 400, "error_rate": 0.01, "latency_p99_ms": 20.0,
                           "latency_p50_ms": 10.0, "accuracy": None}


def test_it_shows_an_automatic_rollback(operator, client_for, make_fleet, make_version):
    make_version(version="1.1.0")
    make_fleet({"eu": 10})
    pk = create(operator, version="resnet-1.1.0", strategy="direct", max_attempts=1)["id"]
    distribution_advance(distribution_id=pk)
    devices = offered(Distribution.objects.get(pk=pk))
    report_installs(devices[:8])
    report_installs(devices[8:], "failed", error="out of memory")
    distribution_advance(distribution_id=pk)

    body = status_of(client_for(Role.VIEWER), pk)

    # Two failed installs of ten is over the default 10 % threshold.
    assert body["status"] == "rolled_back" and body["current_stage"] is None and body["waiting_for"] == ""
    assert body["status_reason"].startswith("automatic rollback: 2 of 10 installs in All devices failed")
    assert body["stages"][0]["status"] == "failed"
    assert body["progress"]["rolled_back"] == 10


def test_it_shows_the_soak_and_the_gate(operator, client_for, make_fleet, make_version):
    make_version(version="1.1.0")
    make_fleet({"eu": 10})
    created = create(operator, version="resnet-1.1.0", strategy="canary",
                     strategy_config={"percent": 50, "soak": "PT10M", "gate": "manual"})
    pk, now = created["id"], timezone.now()
    distribution_advance(distribution_id=pk, now=now)
    report_installs(offered(Distribution.objects.get(pk=pk), 0))
    distribution_advance(distribution_id=pk, now=now + timedelta(seconds=1))

    soaking = status_of(client_for(Role.VIEWER), pk)
    assert soaking["stages"][0]["status"] == "soaking"
    assert soaking["waiting_for"].startswith("the soak of Canary 50 %")
    assert soaking["stages"][0]["progress"]["success_rate"] == 1.0

    distribution_advance(distribution_id=pk, now=now + timedelta(minutes=11))
    gated = status_of(client_for(Role.VIEWER), pk)
    assert gated["stages"][0]["status"] == "awaiting_approval" and gated["stages"][0]["verdict"] == "pass"
    assert gated["waiting_for"] == "an operator's approval of Canary 50 %"
    assert gated["stages"][1]["progress"] == {"targeted": 5, "pending": 5, "offered": 0, "installing": 0,
                                              "installed": 0, "active": 0, "failed": 0, "rolled_back": 0,
                                              "success_rate": None}


def test_it_answers_404_for_an_unknown_distribution(client_for):
    assert_error_shape(client_for(Role.VIEWER).get("/api/v1/distributions/424242/status"), 404,
                       "DISTRIBUTION_NOT_FOUND")
