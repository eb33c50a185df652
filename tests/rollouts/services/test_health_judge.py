"""The health judge on constructed telemetry: regressions fail, noise passes, too little is inconclusive."""

import random
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from devices.models import MetricWindow, ModelSlot
from rollouts.health import health_judge
from rollouts.models import Assignment
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create
from tests.rollouts.conftest import offered, report_installs

pytestmark = pytest.mark.usefixtures("_health_judge")


@pytest.fixture
def _health_judge():
    with override_settings(ROLLOUT_JUDGE="rollouts.health.health_judge"):
        yield


def _windows(assignments, version_of, *, start, latency=20.0, spread=2.0, errors=0.001, accuracy=None,
             inferences=200, seed=1):
    rng = random.Random(seed)
    rows = []
    for a in assignments:
        version = version_of(a)
        p99 = max(0.5, rng.gauss(latency, spread))
        rows.append(MetricWindow(
            device_id=a.device_id, version=version, model_name=version.ai_model.name, model_version=version.version,
            window_start=start, window_end=start + timedelta(seconds=30), inference_count=inferences,
            error_count=round(inferences * errors), latency_p50_ms=p99 / 2, latency_p95_ms=p99 * 0.9,
            latency_p99_ms=p99, accuracy=accuracy if accuracy is None else min(1, max(0, rng.gauss(accuracy, 0.01))),
            labelled_count=inferences if accuracy is not None else None))
    MetricWindow.objects.bulk_create(rows)


def _installed_canary(new, *, soak: str = "PT10M"):
    """A 25 % canary of `new` over the fleet, its stage installed at `now` + 1 s: (distribution, now)."""
    now = timezone.now()
    distribution = distribution_create(version=new, strategy="canary", config={"percent": 25, "soak": soak}, now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0))
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    return distribution, now


@pytest.fixture
def canary(make_fleet, make_version):
    """A 25 % canary of 1.1.0 over 40 devices on 1.0.0, installed at `now`: (distribution, now)."""
    make_fleet({"eu": 20, "us": 20}, running=make_version(version="1.0.0"))
    return _installed_canary(make_version(version="1.1.0"))


def _feed(distribution, now, *, new=None, base=None):
    stage_devices = Assignment.objects.filter(distribution=distribution).select_related(
        "version__ai_model", "previous_version__ai_model")
    start = now + timedelta(seconds=5)
    _windows([a for a in stage_devices if a.stage.index == 0], lambda a: a.version, start=start, seed=2,
             **(new or {}))
    _windows([a for a in stage_devices if a.stage.index == 1], lambda a: a.previous_version, start=start, seed=3,
             **(base or {}))


def _judge(distribution, at):
    stage = distribution.stages.get(index=0)
    stage.distribution = distribution
    return health_judge(stage, now=at)


def test_a_clear_latency_regression_fails_before_the_soak_ends(canary):
    distribution, now = canary
    _feed(distribution, now, new={"latency": 30.0})
    verdict = _judge(distribution, now + timedelta(minutes=1))
    assert verdict.result == "fail"
    assert "p99 latency +" in verdict.reason
    assert verdict.evidence["latency_p_value"] < 0.01
    assert 40 < verdict.evidence["latency_increase_pct"] < 60


def test_noise_passes_when_the_soak_is_over_and_not_before(canary):
    distribution, now = canary
    _feed(distribution, now, new={"latency": 20.5}, base={"latency": 20.0})
    assert _judge(distribution, now + timedelta(minutes=1)) is None
    verdict = _judge(distribution, now + timedelta(minutes=11))
    assert verdict.result == "pass"
    assert verdict.evidence["new"]["devices"] == 10 and verdict.evidence["baseline"]["devices"] == 30


def test_too_little_data_at_the_end_of_the_soak_is_inconclusive(canary):
    distribution, now = canary
    _feed(distribution, now, new={"inferences": 10}, base={"inferences": 10})
    verdict = _judge(distribution, now + timedelta(minutes=11))
    assert verdict.result == "inconclusive"
    assert "too little data" in verdict.reason


def test_an_accuracy_drop_fails(canary):
    distribution, now = canary
    _feed(distribution, now, new={"accuracy": 0.75}, base={"accuracy": 0.93})
    verdict = _judge(distribution, now + timedelta(minutes=1))
    assert verdict.result == "fail"
    assert "accuracy -" in verdict.reason


def test_an_error_rate_above_the_limit_fails(canary):
    distribution, now = canary
    _feed(distribution, now, new={"errors": 0.08})
    verdict = _judge(distribution, now + timedelta(minutes=1))
    assert verdict.result == "fail"
    assert "error rate 8.00% > 5.00%" in verdict.reason


def test_the_orchestrator_rolls_back_on_the_judges_failing_verdict(canary):
    distribution, now = canary
    _feed(distribution, now, new={"latency": 30.0})
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=1))
    distribution.refresh_from_db()
    assert distribution.status == "rolled_back"
    assert "p99 latency" in distribution.status_reason
    reverted = ModelSlot.objects.filter(source=f"rollback:{distribution.pk}")
    assert reverted.count() == 10
    assert set(reverted.values_list("version__version", "rollback")) == {("1.0.0", True)}
    stage = distribution.stages.get(index=0)
    assert stage.verdict == "fail" and stage.evidence["new"]["devices"] == 10


def test_an_ab_test_promotes_the_significantly_better_version(make_fleet, make_version):
    make_fleet({"eu": 40}, running=make_version(version="1.0.0"))
    a, b = make_version(version="1.1.0"), make_version(version="1.2.0")
    now = timezone.now()
    distribution = distribution_create(version=a, version_b=b, config={"window": "PT5M", "metric": "latency_p99_ms",
                                                                       "min_improvement": 10}, now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0))
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    tested = list(Assignment.objects.filter(distribution=distribution).select_related("version__ai_model"))
    _windows([t for t in tested if t.version_id == a.pk], lambda t: t.version, start=now, latency=30.0, seed=4)
    _windows([t for t in tested if t.version_id == b.pk], lambda t: t.version, start=now, latency=20.0, seed=5)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=6))
    distribution.refresh_from_db()
    assert distribution.winner == b
    stage = distribution.stages.get(index=0)
    assert stage.status == "passed" and stage.evidence["improvement_pct"] > 10
    assert stage.evidence["versions"] == {"a": [a.model_id], "b": [b.model_id]}
    assert {x.version_id for x in offered(distribution, 1)} == {b.pk}


def test_an_ab_test_without_a_significant_difference_waits_for_an_operator(make_fleet, make_version):
    make_fleet({"eu": 40})
    a, b = make_version(version="1.1.0"), make_version(version="1.2.0")
    now = timezone.now()
    distribution = distribution_create(version=a, version_b=b, config={"window": "PT5M"}, now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0))
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    tested = list(Assignment.objects.filter(distribution=distribution).select_related("version__ai_model"))
    for version in (a, b):  # the same figures for both halves, whichever devices the hash put in each
        _windows([t for t in tested if t.version_id == version.pk], lambda t: t.version, start=now, latency=20.0,
                 seed=6)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=6))
    stage = distribution.stages.get(index=0)
    assert stage.status == "awaiting_approval" and stage.verdict == "inconclusive"


def test_status_and_metrics_show_the_new_version_against_its_baseline(canary, monkeypatch):
    from devices.services.telemetry import metric_rollup_recent
    from rollouts.selectors import distribution_metrics, distribution_status

    distribution, now = canary
    _feed(distribution, now, new={"latency": 26.0})
    distribution.refresh_from_db()
    live = distribution_status(distribution=distribution, now=now + timedelta(seconds=40))["live_metrics"]
    assert live["new"]["devices"] == 10 and live["baseline"]["devices"] == 30
    assert 20 < live["latency_increase_pct"] < 40
    metric_rollup_recent(now=now + timedelta(minutes=3))
    metrics = distribution_metrics(distribution=distribution, now=now + timedelta(minutes=3))
    assert metrics["scope"] == "distribution"
    roles = {serie["role"]: serie for serie in metrics["series"]}
    assert set(roles) == {"new", "baseline"}
    assert roles["new"]["version"] == "resnet-1.1.0"
    assert roles["new"]["points"][0]["latency_p99_ms"] > roles["baseline"]["points"][0]["latency_p99_ms"]
    assert [s["index"] for s in metrics["stages"]] == [0, 1]
    assert roles["new"]["points"][0]["inferences"] == 10 * 200
    monkeypatch.setattr("rollouts.selectors.OWN_DEVICES_SERIES_LIMIT", 5)
    fleet = distribution_metrics(distribution=distribution, now=now + timedelta(minutes=3))
    assert fleet["scope"] == "fleet"
    assert {s["role"]: s["points"][0]["inferences"] for s in fleet["series"]} == {"new": 2000, "baseline": 6000}


def test_a_soak_ending_without_enough_telemetry_pauses_as_inconclusive(canary):
    distribution, now = canary
    _feed(distribution, now, new={"inferences": 10}, base={"inferences": 10})
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=11))
    distribution.refresh_from_db()
    assert distribution.status == "paused"
    assert "inconclusive: too little data" in distribution.status_reason
    assert distribution.stages.get(index=0).verdict == "inconclusive"
    from rollouts.selectors import distribution_status

    assert "resume or roll back" in distribution_status(distribution=distribution)["waiting_for"]


def test_the_manual_policy_pauses_on_a_regression_and_waits(make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_fleet({"eu": 20, "us": 20}, running=old)
    now = timezone.now()
    new = make_version(version="1.1.0")
    distribution = distribution_create(version=new, strategy="canary", rollback_policy="manual",
                                       config={"percent": 25, "soak": "PT10M"}, now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0))
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    _feed(distribution, now, new={"latency": 30.0})
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=1))
    distribution.refresh_from_db()
    assert distribution.status == "paused"
    assert "p99 latency +" in distribution.status_reason
    assert ModelSlot.objects.filter(version=new).count() == 10  # nothing rolled back by itself
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(minutes=20))
    distribution.refresh_from_db()
    assert distribution.status == "paused"


def test_another_models_telemetry_on_the_same_devices_never_enters_the_verdict(make_fleet, make_version):
    """Every device runs resnet and magika; resnet's canary is judged on resnet's windows alone."""
    resnet, magika = make_version("resnet", "1.0.0"), make_version("magika", "1.0.0")
    make_fleet({"eu": 20, "us": 20}, running=[resnet, magika])
    distribution, now = _installed_canary(make_version("resnet", "1.1.0"))
    _feed(distribution, now)  # resnet: new and baseline alike
    everyone = list(Assignment.objects.filter(distribution=distribution))
    # magika is terrible on the canary's devices and excellent elsewhere, in the same window.
    canary_devices = [a for a in everyone if a.stage.index == 0]
    _windows(canary_devices, lambda a: magika, start=now + timedelta(seconds=5), latency=90.0, errors=0.3, seed=7)
    _windows([a for a in everyone if a.stage.index == 1], lambda a: magika, start=now + timedelta(seconds=5),
             latency=5.0, seed=8)

    verdict = _judge(distribution, now + timedelta(minutes=11))

    assert verdict.result == "pass", verdict.reason
    assert verdict.evidence["new"]["devices"] == 10 and verdict.evidence["new"]["error_rate"] < 0.01
    assert verdict.evidence["baseline"]["devices"] == 30 and verdict.evidence["baseline"]["latency_p99_ms"] > 15
    assert verdict.evidence["versions"] == {"new": ["resnet-1.1.0"], "baseline": ["resnet-1.0.0"]}
    from rollouts.selectors import distribution_metrics, distribution_status

    distribution.refresh_from_db()
    live = distribution_status(distribution=distribution, now=now + timedelta(minutes=1))["live_metrics"]
    assert live["new"]["latency_p99_ms"] < 30 and live["baseline"]["latency_p99_ms"] > 15
    series = distribution_metrics(distribution=distribution, now=now + timedelta(minutes=3))["series"]
    assert {s["version"] for s in series} == {"resnet-1.1.0", "resnet-1.0.0"}


@override_settings(ROLLOUT_TELEMETRY_WINDOW_SECONDS=60, DEVICE_POLL_INTERVAL_SECONDS=60, METRIC_FLUSH_SECONDS=2)
def test_a_short_soak_waits_for_the_first_windows_instead_of_pausing_empty(make_fleet, make_version):
    make_fleet({"eu": 20, "us": 20}, running=make_version(version="1.0.0"))
    distribution, now = _installed_canary(make_version(version="1.1.0"), soak="PT30S")  # installs done at +1 s
    from rollouts.selectors import distribution_status

    # The soak is over at +31 s but no window could have arrived before +1 s + 60 s + 60 s + 2 s.
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=40))
    distribution.refresh_from_db()
    assert distribution.status == "running" and distribution.stages.get(index=0).status == "soaking"
    assert "first metric windows" in distribution_status(distribution=distribution,
                                                         now=now + timedelta(seconds=40))["waiting_for"]

    _feed(distribution, now)  # the windows arrive with the devices' next poll
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=100))
    assert distribution.stages.get(index=0).verdict == "pass"


@override_settings(ROLLOUT_TELEMETRY_WINDOW_SECONDS=60, DEVICE_POLL_INTERVAL_SECONDS=60, METRIC_FLUSH_SECONDS=2)
def test_a_short_soak_without_windows_is_inconclusive_once_they_were_due(canary):
    distribution, now = canary
    stage = distribution.stages.get(index=0)
    stage.distribution = distribution
    stage.soak_ends_at = now + timedelta(seconds=30)

    assert health_judge(stage, now=now + timedelta(seconds=60)) is None
    verdict = health_judge(stage, now=now + timedelta(seconds=124))
    assert verdict.result == "inconclusive" and "one window and one poll after the installs" in verdict.reason
