"""Health judging end to end: gunicorn, a Celery worker whose beat asks the telemetry health judge every second,
and 1,000 simulated devices reporting metric windows drawn from each version's behaviour.

One stack serves every case. The fleet is split into one region per case and each case's distribution targets
only its region, so the six are launched together, as six operators would, and each test follows its own on
disjoint devices, all starting on rollnet-1.0.0 (latency 20±2 ms, 0.1 % errors): a good canary completes; +50 %
latency and 8 % errors are rolled back by the tick on its own and every device goes back; an A/B test promotes
the faster version; too few devices is paused as inconclusive; the manual policy pauses and waits.

Every device also runs a second model, pairnet-1.0.0, and a progressive rollout of pairnet-2.0.0 with no
explicit target (so: every device that runs pairnet) goes over the whole fleet at the same time: it completes
while rollnet's canaries are judged and rolled back, and neither model's verdicts read the other's windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db.models import Max, Min

from devices.models import Device, InstallReport, MetricWindow, ModelSlot
from hotswap.accounts.roles import Role
from hotswap_device.fleet import device_spec, parse_behaviours
from hotswap_device.simulator import BackgroundFleet, FleetConfig
from models_app.models import ModelVersion
from models_app.validation_runs import model_version_approve, version_is_distributable
from rollouts.models import Assignment, Distribution, Transition
from tests.devices.checkin_helpers import registry_version
from tests.e2e.fleets import register_fleet, seed_simulator
from tests.live import celery_worker, gunicorn_server

# Plain django_db: each test only reads, inside a transaction it rolls back; the stack's rows were committed
# by the module fixture and a transactional test's flush after every case would take the fleet away.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

DEVICES = 1000
CASES = ("good", "latency", "errors", "ab", "little", "manual")
REGIONS = tuple(f"hr-{case}" for case in CASES)  # one region (~167 devices) per case
POLL_SECONDS = 2
TICK_SECONDS = 1
ACT_WITHIN_SECONDS = 60.0  # the bound from the first bad window to the rollback; the goal is 10 s
PASSWORD = "0perator-Passw0rd"
MODEL = "rollnet"  # model A: every case ships a version of it to its own region
OTHER = "pairnet"  # model B: every device runs it too, and one progressive rollout ships 2.0.0 to all of them
OTHER_BEHAVIOURS = {"1.0.0": "latency:10±1,errors:0.001", "2.0.0": "latency:10±1,errors:0.001"}
OTHER_LAUNCH = {"name": "health e2e: pairnet everywhere", "version": f"{OTHER}-2.0.0", "strategy": "progressive",
                "strategy_config": {"percentages": [30, 100], "soak": "PT6S"}}
# Per version: what the simulated devices measure when they run it.
BEHAVIOURS = {
    "1.0.0": "latency:20±2,errors:0.001",  # what the fleet runs before every case: the baseline
    "1.1.0": "latency:20±2,errors:0.001",  # (a) as good as the baseline
    "1.2.0": "latency:30±3,errors:0.001",  # (b), (f) +50 % latency
    "1.3.0": "latency:20±2,errors:0.08",  # (c) 8 % errors
    "1.4.0": "latency:20±2,errors:0.001",  # (d) A
    "1.5.0": "latency:14±1.4,errors:0.001",  # (d) B: 30 % faster
}
# What each case's operator asks for (the version names are rollnet-<version>).
LAUNCHES = {
    "good": {"version": "1.1.0", "strategy": "canary",
             "strategy_config": {"percent": 20, "soak": "PT6S", "final_soak": "PT6S"}},
    "latency": {"version": "1.2.0", "strategy": "canary", "strategy_config": {"percent": 20, "soak": "PT10M"}},
    "errors": {"version": "1.3.0", "strategy": "canary", "strategy_config": {"percent": 20, "soak": "PT10M"}},
    "ab": {"version": "1.4.0", "version_b": "1.5.0", "strategy": "ab_test",
           "strategy_config": {"window": "PT8S", "metric": "latency_p99_ms", "min_improvement": 10}},
    # The canary has ~33 devices: never enough.
    "little": {"version": "1.1.0", "strategy": "canary", "strategy_config": {"percent": 20, "soak": "PT5S"},
               "success_criteria": {"min_devices": 500}},
    "manual": {"version": "1.2.0", "strategy": "canary", "rollback_policy": "manual",
               "strategy_config": {"percent": 20, "soak": "PT10M"}},
}
SERVER_ENV = {"DEVICE_POLL_INTERVAL_SECONDS": str(POLL_SECONDS), "LOG_LEVEL": "WARNING"}
WORKER_ENV = {"ROLLOUT_JUDGE": "rollouts.health.health_judge", "ROLLOUT_TICK_SECONDS": str(TICK_SECONDS),
              "HEARTBEAT_FLUSH_SECONDS": "1", "METRIC_ROLLUP_SECONDS": "3600", "OFFLINE_CHECK_SECONDS": "3600",
              # The worker validates the versions next to a busy machine: timing gates would judge its load.
              "GATE_MAX_LATENCY_P99_MS": "5000", "GATE_MIN_THROUGHPUT_IPS": "1", "GATE_MAX_LATENCY_INCREASE": "100",
              "VALIDATION_BENCHMARK_RUNS": "20", "LOG_LEVEL": "INFO"}


def wait_for(condition, what: str, timeout: float = 45.0, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            tail = f"\nworker log:\n{log.read_text()[-4000:]}" if log else ""
            pytest.fail(f"not within {timeout:.0f} s: {what}{tail}")
        time.sleep(0.25)
    return result


@dataclass
class Stack:
    """The shared stack: the operator's API session, the versions by name, the fleet, the worker's log."""

    base: str
    api: requests.Session
    versions: dict[str, ModelVersion]
    fleet: BackgroundFleet
    worker_log: Path
    launched: dict[str, int]  # case → distribution id ("other": pairnet's rollout)
    other: dict[str, ModelVersion]  # pairnet's versions

    def distribution(self, case: str) -> Distribution:
        return Distribution.objects.get(pk=self.launched[case])

    def post(self, path: str, body: dict | None = None) -> dict:
        response = self.api.post(f"{self.base}/api/v1/{path}", json=body or {}, timeout=60)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def launch(self, case: str) -> None:
        plan = dict(LAUNCHES[case])
        plan["version"] = f"{MODEL}-{plan['version']}"
        if "version_b" in plan:
            plan["version_b"] = f"{MODEL}-{plan['version_b']}"
        created = self.post("distributions", {"name": f"health e2e: {case}", "target": {"regions": [f"hr-{case}"]},
                                              **plan})
        self.launched[case] = created["id"]

    def settles(self, case: str, timeout: float = 150.0) -> Distribution:
        """Waits until the case's distribution stops moving by itself: completed, rolled back or paused."""
        distribution = self.distribution(case)

        def settled():
            distribution.refresh_from_db()
            return distribution.status in ("completed", "rolled_back", "paused", "aborted")
        wait_for(settled, f"{case}: {distribution} settles (it is {distribution.status}: "
                          f"{distribution.status_reason})", timeout=timeout, log=self.worker_log)
        return distribution

    def region_runs(self, region: str, version: ModelVersion, timeout: float = 90.0) -> None:
        """Every simulated device of the region runs `version`, and the server's device list says so too."""
        label = version.model_id
        model = version.ai_model.name
        wait_for(lambda: set(self.fleet.running([region], model)) == {label},
                 f"every simulated device of {region} runs {label} (they run "
                 f"{dict(self.fleet.running([region], model))})", timeout=timeout)
        slots = ModelSlot.objects.filter(device__region=region, ai_model=version.ai_model)
        wait_for(lambda: slots.count() == Device.objects.filter(region=region).count()
                 and not slots.exclude(running_version=version).exists(),
                 f"the server sees every device of {region} on {label}", timeout=30)


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """gunicorn (2 workers), a Celery worker with beat judging with the health judge, 1,000 simulated devices,
    and every case's distribution launched."""
    with django_db_blocker.unblock():
        try:
            versions = {v: registry_version(name=MODEL, version=v, hidden=8 + i)[0]
                        for i, v in enumerate(BEHAVIOURS)}
            other = {v: registry_version(name=OTHER, version=v, hidden=24 + i)[0]
                     for i, v in enumerate(OTHER_BEHAVIOURS)}
            operator = get_user_model().objects.create_user(username="health-operator", password=PASSWORD)
            operator.groups.add(Group.objects.get(name=Role.OPERATOR))
            specs = [device_spec(i, prefix="hr-", regions=REGIONS) for i in range(1, DEVICES + 1)]
            runs = (versions["1.0.0"], other["1.0.0"])
            credentials = register_fleet(specs, runs)
            state = tmp_path_factory.mktemp("health-fleet") / "state.json"
            with gunicorn_server(env=SERVER_ENV, workers=2) as (base, _server), \
                    celery_worker(beat=True, env=WORKER_ENV) as (_worker, log):
                validated = ModelVersion.objects.filter(ai_model__name__in=(MODEL, OTHER))
                wait_for(lambda: not validated.filter(status__in=("uploaded", "validating")).exists(),
                         "the worker validates every version", timeout=180, log=log)
                # This file is about health judging: a version whose validation a loaded machine failed is
                # shipped the way the product allows it, with an Admin's recorded approval.
                admin = get_user_model().objects.create_superuser(username="health-admin", password=PASSWORD)
                for version in validated.filter(status=ModelVersion.Status.FAILED):
                    model_version_approve(version=version, actor=admin,
                                          reason="e2e: validated on a loaded 2-core machine")
                assert all(version_is_distributable(v) for v in validated.all()), \
                    list(validated.values_list("model_id", "status"))
                api = requests.Session()
                token = api.post(f"{base}/api/v1/auth/token", json={"username": operator.username,
                                                                    "password": PASSWORD}, timeout=30)
                api.headers["Authorization"] = f"Bearer {token.json()['access']}"
                seed_simulator(state, base, credentials, runs, POLL_SECONDS)
                fleet = BackgroundFleet(FleetConfig(
                    server=base, devices=DEVICES, prefix="hr-", regions=REGIONS, poll_seconds=POLL_SECONDS,
                    max_poll_seconds=POLL_SECONDS, download_seconds=0.5, concurrency=100, state_file=state,
                    seed=5, behaviours=parse_behaviours(
                        [f"{MODEL}-{v}={b}" for v, b in BEHAVIOURS.items()]
                        + [f"{OTHER}-{v}={b}" for v, b in OTHER_BEHAVIOURS.items()])))
                try:
                    wait_for(lambda: fleet.fleet.stats.checked_in_devices == DEVICES, "every device checks in",
                             timeout=60)
                    stack = Stack(base=base, api=api, versions={v: ModelVersion.objects.get(pk=m.pk)
                                                                for v, m in versions.items()},
                                  fleet=fleet, worker_log=log, launched={},
                                  other={v: ModelVersion.objects.get(pk=m.pk) for v, m in other.items()})
                    for case in CASES:
                        stack.launch(case)
                    stack.launched["other"] = stack.post("distributions", OTHER_LAUNCH)["id"]
                    yield stack
                finally:
                    stats = fleet.stop()
                assert stats.fatal == "" and not stats.refusals, stats.summary()
                assert not [kind for kind in stats.errors if "timeout" in kind or "connection" in kind], \
                    stats.summary()
        finally:
            # What a transactional test does when it ends: the next module starts on an empty database.
            call_command("flush", interactive=False, verbosity=0)


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n  [health e2e] {line}", flush=True)


def seconds_to_act(distribution: Distribution, bad: ModelVersion, to_status: str) -> float:
    """From the first window of the bad version reaching the server to the distribution's transition."""
    first_bad = MetricWindow.objects.filter(version=bad, device__region__in=distribution.target["regions"]) \
        .aggregate(at=Min("received_at"))["at"]
    acted = Transition.objects.get(distribution=distribution, stage=None, to_status=to_status).at
    assert first_bad is not None and acted > first_bad, (first_bad, acted)
    return (acted - first_bad).total_seconds()


def canary_devices(distribution: Distribution) -> list[int]:
    return list(Assignment.objects.filter(stage__distribution=distribution, stage__index=0)
                .values_list("device_id", flat=True))


def assert_rolled_back_everywhere(stack: Stack, distribution: Distribution, bad: ModelVersion) -> float:
    """Every device the distribution touched is sent back, and every device of the region runs 1.0.0 again.

    Returns the seconds from the rollback to the last of those devices reporting 1.0.0 active.
    """
    old, region = stack.versions["1.0.0"], distribution.target["regions"][0]
    touched = canary_devices(distribution)
    desired = ModelSlot.objects.filter(device_id__in=touched, ai_model=old.ai_model)
    assert desired.count() == len(touched) > 0
    assert not desired.exclude(version=old, rollback=True).exists(), \
        list(desired.exclude(version=old, rollback=True).values_list("device__device_id", "version_id", "rollback"))
    untouched = Device.objects.filter(region=region).exclude(pk__in=touched)
    assert not ModelSlot.objects.filter(device__in=untouched, ai_model=old.ai_model, version__isnull=False).exists()
    assert not Assignment.objects.filter(distribution=distribution, is_open=True).exists()
    assert MetricWindow.objects.filter(device_id__in=touched, version=bad).exists()
    stack.region_runs(region, old)
    rolled_back = Transition.objects.get(distribution=distribution, stage=None, to_status="rolled_back").at
    back = InstallReport.objects.filter(device_id__in=touched, version=old, status="active",
                                        received_at__gt=rolled_back)
    wait_for(lambda: back.values("device").distinct().count() == len(touched), "every touched device reports 1.0.0")
    return (back.aggregate(last=Max("received_at"))["last"] - rolled_back).total_seconds()


def test_a_canary_of_a_good_version_completes(stack, capsys):
    good = stack.versions["1.1.0"]
    distribution = stack.settles("good")

    assert distribution.status == "completed", distribution.status_reason
    stages = list(distribution.stages.order_by("index"))
    assert [(s.status, s.verdict) for s in stages] == [("passed", "pass"), ("passed", "pass")]
    canary = stages[0].evidence
    # Judged on the canary devices whose windows were in when the soak ended.
    assert 3 <= canary["new"]["devices"] <= stages[0].device_count and canary["new"]["inferences"] >= 500
    assert canary["baseline"]["devices"] >= 3, canary["baseline"]  # the region's devices still on 1.0.0
    assert "no significant regression" in canary["reason"]
    stack.region_runs("hr-good", good)
    report(capsys, f"(a) canary of {good.model_id} completed in "
                   f"{(distribution.finished_at - distribution.started_at).total_seconds():.1f} s; canary p99 "
                   f"{canary.get('latency_increase_pct'):+g} % vs the baseline (p = {canary.get('latency_p_value')})")


def test_a_canary_with_50_percent_more_latency_is_rolled_back_and_every_device_goes_back(stack, capsys):
    bad = stack.versions["1.2.0"]
    distribution = stack.settles("latency")

    assert distribution.status == "rolled_back", distribution.status_reason
    assert distribution.status_reason.startswith("automatic rollback:")
    assert "p99 latency +" in distribution.status_reason
    lag = seconds_to_act(distribution, bad, "rolled_back")
    canary = distribution.stages.get(index=0)
    assert (canary.status, canary.verdict) == ("failed", "fail")
    assert 30 < canary.evidence["latency_increase_pct"] < 80 and canary.evidence["latency_p_value"] < 0.05
    converged = assert_rolled_back_everywhere(stack, distribution, bad)
    report(capsys, f"(b) +50 % latency: rolled back {lag:.1f} s after the first bad window reached the server "
                   f"(bound {ACT_WITHIN_SECONDS:.0f} s, goal 10 s), judged on {canary.evidence['new']['devices']} "
                   f"device(s): p99 +{canary.evidence['latency_increase_pct']} %, p = "
                   f"{canary.evidence['latency_p_value']}; the {len(canary_devices(distribution))} canary devices "
                   f"reported 1.0.0 again within {converged:.1f} s of the rollback")
    assert lag <= ACT_WITHIN_SECONDS


def test_a_version_with_8_percent_errors_is_rolled_back(stack, capsys):
    bad = stack.versions["1.3.0"]
    distribution = stack.settles("errors")

    assert distribution.status == "rolled_back", distribution.status_reason
    assert "error rate" in distribution.status_reason and "> 5.00%" in distribution.status_reason
    canary = distribution.stages.get(index=0)
    assert 0.05 < canary.evidence["new"]["error_rate"] < 0.11
    lag = seconds_to_act(distribution, bad, "rolled_back")
    converged = assert_rolled_back_everywhere(stack, distribution, bad)
    report(capsys, f"(c) 8 % errors: rolled back {lag:.1f} s after the first bad window reached the server "
                   f"(error rate {canary.evidence['new']['error_rate']:.2%}); the canary reported 1.0.0 again within "
                   f"{converged:.1f} s of the rollback")
    assert lag <= ACT_WITHIN_SECONDS


def test_an_ab_test_picks_the_faster_version_and_promotes_it(stack, capsys):
    a, b = stack.versions["1.4.0"], stack.versions["1.5.0"]
    distribution = stack.settles("ab")

    assert distribution.status == "completed", distribution.status_reason
    assert distribution.winner_id == b.pk
    test_stage, everyone = distribution.stages.order_by("index")
    assert (test_stage.status, test_stage.verdict) == ("passed", "pass")
    evidence = test_stage.evidence
    assert evidence["winner_id"] == b.pk and evidence["improvement_pct"] >= 10
    assert evidence["a"]["devices"] >= 3 and evidence["b"]["devices"] >= 3
    # A's devices were offered B in the second stage; their first assignments were superseded.
    losers = Assignment.objects.filter(stage=test_stage, version=a, state=Assignment.State.SUPERSEDED)
    assert losers.exists()
    assert set(Assignment.objects.filter(stage=everyone, version=b).values_list("device_id", flat=True)) == \
        set(losers.values_list("device_id", flat=True))
    assert everyone.status == "passed"
    stack.region_runs("hr-ab", b)
    report(capsys, f"(d) A/B: {b.model_id} won on p99 latency by {evidence['improvement_pct']:g} % "
                   f"(p = {evidence['p_value']}) and went to every device of its region (second stage: "
                   f"{everyone.evidence.get('reason')})")


def test_too_little_data_pauses_the_distribution_as_inconclusive(stack, capsys):
    distribution = stack.settles("little")

    assert distribution.status == "paused", distribution.status_reason
    assert "inconclusive: too little data" in distribution.status_reason
    canary = distribution.stages.get(index=0)
    assert (canary.status, canary.verdict) == ("soaking", "inconclusive")
    assert 0 < canary.evidence["new"]["devices"] < 500
    time.sleep(3 * TICK_SECONDS)  # the tick leaves it to an operator
    distribution.refresh_from_db()
    assert distribution.status == "paused"
    assert distribution.stages.get(index=1).status == "pending"
    report(capsys, f"(e) too little data: {distribution.status_reason}")
    stack.post(f"distributions/{distribution.pk}/abort")


def test_the_manual_policy_pauses_and_waits_for_the_operator(stack, capsys):
    bad, old = stack.versions["1.2.0"], stack.versions["1.0.0"]
    distribution = stack.settles("manual")

    assert distribution.status == "paused", distribution.status_reason
    assert "p99 latency +" in distribution.status_reason
    assert "resume to accept it, or roll back" in distribution.status_reason
    lag = seconds_to_act(distribution, bad, "paused")
    canary = canary_devices(distribution)
    wait_for(lambda: stack.fleet.running(["hr-manual"])[bad.model_id] == len(canary), "the canary runs the bad version")
    time.sleep(4 * TICK_SECONDS)  # it waits: no rollback, the canary keeps the new version
    distribution.refresh_from_db()
    assert distribution.status == "paused"
    assert not Transition.objects.filter(distribution=distribution, to_status="rolled_back").exists()
    assert not ModelSlot.objects.filter(device_id__in=canary, ai_model=bad.ai_model).exclude(version=bad).exists()
    assert stack.fleet.running(["hr-manual"])[bad.model_id] == len(canary)

    stack.post(f"distributions/{distribution.pk}/rollback", {"reason": "confirmed the regression"})
    assert_rolled_back_everywhere(stack, distribution, bad)
    assert Transition.objects.get(distribution=distribution, to_status="rolled_back").actor_label == \
        "health-operator"
    report(capsys, f"(f) manual policy: paused {lag:.1f} s after the first bad window reached the server; the "
                   f"operator's rollback took the canary back to {old.model_id}")
    assert lag <= ACT_WITHIN_SECONDS


def test_the_other_models_rollout_completes_over_the_same_devices_untouched_by_the_rollbacks(stack, capsys):
    """pairnet-2.0.0 goes to every device (no explicit target: every device that runs pairnet) while rollnet's
    canaries are judged on the same devices; rollnet's rollbacks leave pairnet's slots as pairnet's rollout set
    them, device by device, and every verdict of either model read windows of that model only."""
    old, new = stack.other["1.0.0"], stack.other["2.0.0"]
    distribution = stack.settles("other", timeout=240)

    assert distribution.status == "completed", distribution.status_reason
    assert distribution.assignments.values("device").distinct().count() == DEVICES
    for stage in distribution.stages.order_by("index"):
        assert (stage.status, stage.verdict) == ("passed", "pass"), (stage.name, stage.evidence)
        assert stage.evidence["versions"] == {"new": [new.model_id], "baseline": [old.model_id]}, stage.evidence
    for region in REGIONS:
        stack.region_runs(region, new)

    # Device by device: pairnet's slot holds what its own rollout set (never a rollback, never rollnet's
    # writer), while the latency and errors canaries on the same devices were sent back to rollnet-1.0.0.
    set_by_rollout = f"distribution:{distribution.pk}"
    pairnet = {s.device_id: s for s in ModelSlot.objects.filter(ai_model=new.ai_model)}
    assert len(pairnet) == DEVICES
    wrong = [(s.device_id, s.version_id, s.running_version_id, s.rollback, s.source) for s in pairnet.values()
             if (s.version_id, s.running_version_id, s.rollback, s.remove, s.source)
             != (new.pk, new.pk, False, False, set_by_rollout)]
    assert not wrong, wrong[:10]
    rolled_back = [d for case in ("latency", "errors") for d in canary_devices(stack.distribution(case))]
    assert rolled_back
    rollnet_back = ModelSlot.objects.filter(device_id__in=rolled_back, ai_model=stack.versions["1.0.0"].ai_model)
    assert set(rollnet_back.values_list("version", "rollback")) == {(stack.versions["1.0.0"].pk, True)}
    assert all(pairnet[d].sequence == 1 for d in rolled_back), "only pairnet's rollout wrote its slot"

    # rollnet's verdicts read rollnet's windows only.
    for case in CASES:
        named = [v for stage in stack.distribution(case).stages.all()
                 for side in (stage.evidence or {}).get("versions", {}).values() for v in side]
        assert named and all(v.startswith(f"{MODEL}-") for v in named), (case, named)
    report(capsys, f"(g) {new.model_id} went to all {DEVICES} devices in "
                   f"{(distribution.finished_at - distribution.started_at).total_seconds():.1f} s next to rollnet's "
                   f"six distributions; the {len(rolled_back)} devices whose rollnet canary was rolled back kept "
                   f"pairnet as its rollout set it")


def test_no_case_touched_another_region(stack):
    """Each of rollnet's distributions only ever assigned devices of its own region (pairnet's went everywhere)."""
    for case in CASES:
        pk = stack.launched[case]
        regions = set(Device.objects.filter(assignments__distribution_id=pk).values_list("region", flat=True))
        assert regions == {f"hr-{case}"}, (case, regions)
