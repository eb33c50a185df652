from datetime import timedelta

from django.utils import timezone

from devices.models import DesiredState
from rollouts.models import Distribution, Stage
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create
from tests.rollouts.conftest import offered, report_installs


def test_it_runs_a_canary_to_completion(make_fleet, make_version, django_capture_on_commit_callbacks):
    old = make_version(version="1.0.0")
    new = make_version(version="1.1.0")
    make_fleet({"eu": 30, "us": 20}, running=old)
    now = timezone.now()
    distribution = distribution_create(version=new, strategy="canary", config={"percent": 10, "soak": "PT10M"},
                                       now=now)
    stages = list(distribution.stages.all())
    assert [s.device_count for s in stages] == [5, 45]
    distribution_advance(distribution_id=distribution.pk, now=now)
    canary = offered(distribution, 0)
    assert len(canary) == 5
    assert DesiredState.objects.filter(version=new).count() == 5
    report_installs(canary)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=5))
    assert Stage.objects.get(pk=stages[0].pk).status == "soaking"
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=11))
    rest = offered(distribution, 1)
    assert len(rest) == 45
    report_installs(rest)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=12))
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.COMPLETED
    assert DesiredState.objects.filter(version=new).count() == 50


def test_status_counts_what_devices_did(make_fleet, make_version):
    from rollouts.selectors import distribution_status

    new = make_version(version="2.0.0")
    make_fleet({"eu": 10})
    now = timezone.now()
    distribution = distribution_create(version=new, strategy="direct", now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    devices = offered(distribution)
    report_installs(devices[:7])
    report_installs(devices[7:8], "failed", error="checksum mismatch")
    distribution_advance(distribution_id=distribution.pk, now=now)
    distribution.refresh_from_db()
    status = distribution_status(distribution=distribution, now=now)
    assert status["progress"]["active"] == 7
    assert status["stages"][0]["progress"]["targeted"] == 10
    assert "installs on" in status["waiting_for"]
