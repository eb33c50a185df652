"""Rollouts end to end: gunicorn, a Celery worker whose beat ticks the orchestrator every second, real storage,
and 1,000 simulated devices that check in, download the artifact from its presigned URL and report over HTTP.

One stack serves every case, the whole fleet running 1.0.0 when they start; each case's distribution of 2.0.0
targets its own regions, so the first three are launched together through the API (as three operators would)
and each test follows its own devices: a canary completes and every device runs the new version; a progressive
rollout stops at a manual gate until the operator approves it through the API; a regional rollout goes region
by region in the order given; and a worker killed with SIGKILL in the middle of a stage (while it holds the
distribution's row lock, when the test can catch it there) is replaced by a new one that finishes the rollout
with every transition recorded exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Max, Min

from devices.models import Device, InstallReport, ModelSlot
from hotswap.accounts.roles import Role
from hotswap_device.fleet import device_spec
from hotswap_device.simulator import BackgroundFleet, FleetConfig
from models_app.models import ModelVersion
from rollouts.models import Assignment, Distribution, Stage, Transition
from tests.artifacts import onnx_model_bytes
from tests.e2e.fleets import register_fleet
from tests.live import celery_worker, gunicorn_server

# Plain django_db: the tests only read, in a transaction they roll back; the stack's rows are committed by the
# module fixture (a transactional test's flush after each case would take the fleet away).
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

DEVICES = 1000
POLL_SECONDS = 2
TICK_SECONDS = 1
MODEL = "stagenet"
OLD, NEW = "1.0.0", "2.0.0"  # the fleet runs OLD when the cases start; every case ships NEW
PASSWORD = "Rollout-Passw0rd"
# One region per case; the regional case gets three, rolled out in an order that is neither alphabetical nor
# the default (smallest region first, then by name).
REGIONAL_ORDER = ["ro-south", "ro-north", "ro-east"]
REGIONS = ("ro-canary", "ro-gated", *REGIONAL_ORDER, "ro-kill")
LAUNCHES = {
    "canary": {"strategy": "canary", "target": {"regions": ["ro-canary"]},
               "strategy_config": {"percent": 10, "soak": "PT3S"}},
    "gated": {"strategy": "progressive", "target": {"regions": ["ro-gated"]},
              "strategy_config": {"stages": [{"percent": 20, "soak": "PT1S"},
                                             {"percent": 50, "soak": "PT1S", "gate": "manual"},
                                             {"percent": 100, "soak": "PT1S"}]}},
    "regional": {"strategy": "regional", "target": {"regions": REGIONAL_ORDER},
                 "strategy_config": {"regions": REGIONAL_ORDER, "soak": "PT1S"}},
    "kill": {"strategy": "progressive", "target": {"regions": ["ro-kill"]},
             "strategy_config": {"stages": [{"percent": 30, "soak": "PT3S"}, {"percent": 100, "soak": "PT1S"}]}},
}
SERVER_ENV = {"DEVICE_POLL_INTERVAL_SECONDS": str(POLL_SECONDS), "LOG_LEVEL": "WARNING"}
WORKER_ENV = {"ROLLOUT_TICK_SECONDS": str(TICK_SECONDS), "HEARTBEAT_FLUSH_SECONDS": "1",
              # A stage passes when its soak is over: these cases test the orchestration (gates, order, a killed
              # worker); the health judge and its telemetry are tested end to end in test_health_rollback.py.
              "ROLLOUT_JUDGE": "rollouts.judges.soak_judge",
              "METRIC_ROLLUP_SECONDS": "3600", "OFFLINE_CHECK_SECONDS": "3600", "LOG_LEVEL": "INFO",
              # The worker validates the upload next to a busy fleet: timing gates would judge the machine's load.
              "GATE_MAX_LATENCY_P99_MS": "5000", "GATE_MIN_THROUGHPUT_IPS": "1", "GATE_MAX_LATENCY_INCREASE": "100",
              "VALIDATION_BENCHMARK_RUNS": "20"}
# Backends holding a row lock on a distribution of this database: the orchestrator inside distribution_advance.
_LOCK_HOLDERS = """
    SELECT l.pid FROM pg_locks l
    WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation = 'rollouts_distribution'::regclass AND l.mode = 'RowShareLock' AND l.granted
      AND l.pid <> pg_backend_pid()
"""


def wait_for(condition, what: str, *, timeout: float = 60.0, log: Path | None = None, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            tail = f"\nworker log:\n{log.read_text(errors='replace')[-4000:]}" if log and log.exists() else ""
            pytest.fail(f"not within {timeout:.0f} s: {what}{tail}")
        time.sleep(every)
    return result


@dataclass
class Stack:
    """The shared stack: the operator's API session, the versions, the fleet, the current worker."""

    base: str
    api: requests.Session
    old: ModelVersion
    new: ModelVersion
    fleet: BackgroundFleet | None = None
    worker: subprocess.Popen | None = None
    worker_log: Path | None = None
    worker_exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    launched: dict[str, int] = field(default_factory=dict)  # case → distribution id

    def worker_start(self) -> None:
        self.worker, self.worker_log = self.worker_exit.enter_context(celery_worker(beat=True, env=WORKER_ENV))

    def worker_kill(self) -> None:
        """SIGKILL to the worker and its embedded beat: no shutdown, no acknowledgement, nothing flushed."""
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=10)
        self.worker_exit.close()

    def post(self, path: str, body: dict | None = None) -> dict:
        response = self.api.post(f"{self.base}/api/v1/{path}", json=body or {}, timeout=60)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def get(self, path: str, **params) -> dict:
        response = self.api.get(f"{self.base}/api/v1/{path}", params=params, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def launch(self, case: str) -> int:
        created = self.post("distributions", {"name": f"fleet e2e: {case}", "version": self.new.model_id,
                                              **LAUNCHES[case]})
        assert created["device_count"] == sum(Counter(d.spec.region for d in self.fleet.fleet.devices)[r]
                                              for r in LAUNCHES[case]["target"]["regions"])
        self.launched[case] = created["id"]
        return created["id"]

    def distribution(self, case: str) -> Distribution:
        return Distribution.objects.get(pk=self.launched[case])

    def settles(self, case: str, timeout: float = 90.0) -> Distribution:
        """Waits until the case's distribution stops by itself (completed, rolled back, paused, aborted)."""
        distribution = self.distribution(case)

        def settled() -> bool:
            distribution.refresh_from_db()
            return not distribution.is_open or distribution.status == Distribution.Status.PAUSED
        wait_for(settled, f"{case} settles (it is {distribution.status}: {distribution.status_reason})",
                 timeout=timeout, log=self.worker_log)
        return distribution

    def regions_run_new(self, regions: list[str]) -> None:
        """Every device of the regions runs NEW: the simulated devices say so, their install reports and the
        API's device list too."""
        size = sum(1 for d in self.fleet.fleet.devices if d.spec.region in regions)
        wait_for(lambda: self.fleet.running(regions) == Counter({self.new.model_id: size}),
                 f"every simulated device of {regions} runs {self.new.model_id} ({dict(self.fleet.running(regions))})")
        reported = InstallReport.objects.filter(device__region__in=regions, version=self.new, status="active")
        assert reported.values("device").distinct().count() == size
        wait_for(lambda: sum(self.get("devices", region=region, version=self.new.model_id, page_size=1)["count"]
                             for region in regions) == size,
                 f"GET /api/v1/devices lists every device of {regions} on {self.new.model_id}", timeout=30)
        assert sum(self.get("devices", region=region)["count"] for region in regions) == size


def upload(api: requests.Session, base: str, version: str, hidden: int) -> str:
    """A real ONNX model through POST /api/v1/models, as CI uploads it; returns its model_id."""
    content = onnx_model_bytes(hidden=hidden)
    response = api.post(f"{base}/api/v1/models", timeout=60,
                        data={"name": MODEL, "version": version, "framework": "onnx",
                              "sha256": hashlib.sha256(content).hexdigest()},
                        files={"artifact": ("model.onnx", content, "application/octet-stream")})
    assert response.status_code == 202, response.text
    return response.json()["model_id"]


def session(base: str, username: str, role: str) -> requests.Session:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    user.groups.add(Group.objects.get(name=role))
    api = requests.Session()
    token = api.post(f"{base}/api/v1/auth/token", json={"username": username, "password": PASSWORD}, timeout=30)
    api.headers["Authorization"] = f"Bearer {token.json()['access']}"
    return api


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """gunicorn (2 workers), a worker with beat, both versions uploaded and validated, 1,000 registered devices
    running OLD, then the canary, gated and regional distributions launched."""
    with django_db_blocker.unblock():
        try:
            with gunicorn_server(env=SERVER_ENV, workers=2) as (base, _server):
                developer = session(base, "rollout-developer", Role.MODEL_DEVELOPER)
                stack = Stack(base=base, api=session(base, "rollout-operator", Role.OPERATOR), old=None, new=None)
                stack.worker_start()
                try:
                    ids = [upload(developer, base, OLD, hidden=8), upload(developer, base, NEW, hidden=12)]
                    versions = ModelVersion.objects.filter(model_id__in=ids)
                    wait_for(lambda: not versions.filter(status__in=("uploaded", "validating")).exists(),
                             "the worker validates both uploads", timeout=120, log=stack.worker_log)
                    assert set(versions.values_list("status", flat=True)) == {"passed"}, \
                        list(versions.values_list("model_id", "status", "status_reason"))
                    stack.old, stack.new = versions.get(model_id=ids[0]), versions.get(model_id=ids[1])
                    # No inferences, so no metric windows: the soak judge does not read them, and generating
                    # and storing them would take half of what two cores give the fleet and the server.
                    # Pre-registered by an operator (enrollment is not under test here), running nothing yet.
                    credentials = register_fleet(device_spec(i, prefix="ro-", regions=REGIONS)
                                                 for i in range(1, DEVICES + 1))
                    stack.fleet = BackgroundFleet(FleetConfig(
                        server=base, credentials=credentials, devices=DEVICES, prefix="ro-", regions=REGIONS,
                        poll_seconds=POLL_SECONDS, max_poll_seconds=POLL_SECONDS, download=True, concurrency=100,
                        inference_rate=0, state_file=tmp_path_factory.mktemp("rollouts-fleet") / "state.json",
                        seed=7))
                    try:
                        wait_for(lambda: stack.fleet.fleet.stats.checked_in_devices == DEVICES,
                                 "every device checks in", timeout=60)
                        # The whole fleet is put on OLD by hand first, so each case is an upgrade.
                        stack.post("devices/desired", {"version": stack.old.model_id, "regions": list(REGIONS)})
                        wait_for(lambda: stack.fleet.running(list(REGIONS)) == Counter({stack.old.model_id: DEVICES}),
                                 "the fleet runs OLD")
                        wait_for(lambda: ModelSlot.objects.filter(running_version=stack.old).count() == DEVICES,
                                 "the heartbeat flush records OLD on every device", timeout=30)
                        for case in ("canary", "gated", "regional"):
                            stack.launch(case)
                        yield stack
                    finally:
                        stats = stack.fleet.stop()
                    assert stats.fatal == "" and not stats.refusals and stats.installs["failed"] == 0, \
                        stats.summary()
                    # A device whose check-in meets a kept-alive connection closed twice in a row retries at its
                    # next poll: on a loaded machine that may happen a few times, never more than that.
                    unanswered = {kind: n for kind, n in stats.errors.items()
                                  if kind == "timeout" or kind.startswith("connection")}
                    assert stats.errors == unanswered and sum(unanswered.values()) <= stats.checkins // 1000 + 1, \
                        stats.summary()
                finally:
                    stack.worker_exit.close()
        finally:
            # What a transactional test does when it ends: the next module starts on an empty database.
            call_command("flush", interactive=False, verbosity=0)


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n  [rollouts e2e] {line}", flush=True)


def stage_transitions(distribution: Distribution) -> list[tuple[int | None, str, str]]:
    return list(Transition.objects.filter(distribution=distribution).order_by("at", "id")
                .values_list("stage__index", "from_status", "to_status"))


def assert_every_transition_once(distribution: Distribution) -> None:
    """The audit trail of a completed distribution: each step once, in order, nothing else."""
    transitions = stage_transitions(distribution)
    doubled = {key: n for key, n in Counter(transitions).items() if n > 1}
    assert not doubled, doubled
    assert [(f, t) for stage, f, t in transitions if stage is None] == [
        ("", "scheduled"), ("scheduled", "running"), ("running", "completed")]
    for stage in distribution.stages.all():
        steps = [(f, t) for index, f, t in transitions if index == stage.index]
        expected = [("pending", "installing"), ("installing", "soaking"), ("soaking", "passed")]
        if stage.gate == Stage.Gate.MANUAL:
            expected[-1:] = [("soaking", "awaiting_approval"), ("awaiting_approval", "passed")]
        assert steps == expected, (stage.index, steps)


def assert_each_device_offered_once(distribution: Distribution) -> None:
    """One assignment per device, offered once, active; each device's desired state changed once by it."""
    assignments = Assignment.objects.filter(distribution=distribution)
    assert assignments.count() == distribution.device_count
    assert set(assignments.values_list("state", "attempts").distinct()) == {("active", 1)}
    assert not assignments.filter(is_open=True).exists()
    # Set by hand to OLD (sequence 1), then once by the distribution.
    desired = ModelSlot.objects.filter(device__assignments__distribution=distribution, ai_model=distribution.ai_model)
    assert set(desired.values_list("version", "sequence").distinct()) == {(distribution.version_id, 2)}


def assert_completed_everywhere(stack: Stack, distribution: Distribution, regions: list[str]) -> None:
    """Completed; every device of the regions runs NEW; each transition and each device's offer happened once."""
    assert distribution.status == "completed", distribution.status_reason
    stack.regions_run_new(regions)
    assert_every_transition_once(distribution)
    assert_each_device_offered_once(distribution)


def test_a_canary_completes_and_every_device_runs_the_new_version(stack, capsys):
    distribution = stack.settles("canary")

    assert distribution.status == "completed", distribution.status_reason
    canary, rest = distribution.stages.order_by("index")
    assert (canary.kind, canary.status, canary.soak_seconds, rest.status) == ("canary", "passed", 3, "passed")
    assert canary.device_count == round(distribution.device_count * 0.1)
    # The rest was offered only after the canary's soak ended.
    assert (canary.soak_ends_at - canary.installed_at).total_seconds() == 3
    rest_offered = Assignment.objects.filter(stage=rest).aggregate(first=Min("offered_at"))["first"]
    assert rest_offered >= canary.soak_ends_at and rest_offered >= canary.finished_at
    assert_completed_everywhere(stack, distribution, ["ro-canary"])
    report(capsys, f"(a) canary of {canary.device_count} then {rest.device_count} devices: completed in "
                   f"{(distribution.finished_at - distribution.started_at).total_seconds():.1f} s")


def test_a_progressive_rollout_waits_at_its_manual_gate_until_approved_through_the_api(stack, capsys):
    distribution = stack.distribution("gated")
    gate = distribution.stages.get(index=1)
    wait_for(lambda: Stage.objects.get(pk=gate.pk).status == Stage.Status.AWAITING_APPROVAL,
             "the second stage awaits approval", timeout=60, log=stack.worker_log)
    time.sleep(3 * TICK_SECONDS)  # ticks come and go: it waits for the operator
    distribution.refresh_from_db()
    status = stack.get(f"distributions/{distribution.pk}/status")
    assert distribution.status == "running" and status["current_stage"] == 1
    assert "approval" in status["waiting_for"], status["waiting_for"]
    last = distribution.stages.get(index=2)
    assert last.status == "pending" and not Assignment.objects.filter(stage=last).exclude(state="pending").exists()
    untouched = Device.objects.filter(assignments__stage=last)
    assert not untouched.exclude(slots__running_version=stack.old).exists()

    approved = time.monotonic()
    stack.post(f"distributions/{distribution.pk}/approve")
    distribution = stack.settles("gated")

    assert distribution.status == "completed", distribution.status_reason
    gate.refresh_from_db()
    assert gate.approved_by.username == distribution.approved_by.username == "rollout-operator"
    approval = Transition.objects.get(stage=gate, to_status="passed")
    assert (approval.from_status, approval.actor_label) == ("awaiting_approval", "rollout-operator")
    assert Assignment.objects.filter(stage=last).aggregate(first=Min("offered_at"))["first"] >= approval.at
    assert_completed_everywhere(stack, distribution, ["ro-gated"])
    report(capsys, f"(b) progressive 20/50/100 % held at its gate; approved through the API, it completed "
                   f"{time.monotonic() - approved:.1f} s later")


def test_a_regional_rollout_goes_region_by_region_in_the_given_order(stack, capsys):
    distribution = stack.settles("regional")

    assert distribution.status == "completed", distribution.status_reason
    stages = list(distribution.stages.order_by("index"))
    assert [s.region for s in stages] == REGIONAL_ORDER  # no "other regions" stage: the target names only these
    starts = dict(Transition.objects.filter(distribution=distribution, to_status="installing")
                  .values_list("stage__region", "at"))
    assert sorted(starts, key=starts.get) == REGIONAL_ORDER
    for previous, stage in itertools.pairwise(stages):
        # A region starts only once the previous one passed, after every device of it reported the install.
        assert stage.started_at >= previous.finished_at
        last_install = InstallReport.objects.filter(device__region=previous.region, version=stack.new,
                                                    status="active").aggregate(at=Max("received_at"))["at"]
        first_install = InstallReport.objects.filter(device__region=stage.region, version=stack.new) \
            .aggregate(at=Min("received_at"))["at"]
        assert last_install <= stage.started_at <= first_install
    # Each region's stage holds exactly that region's devices.
    for stage in stages:
        assert set(Device.objects.filter(assignments__stage=stage).values_list("region", flat=True)) == {stage.region}
    assert_completed_everywhere(stack, distribution, REGIONAL_ORDER)
    offsets = [(s.region, (s.started_at - stages[0].started_at).total_seconds()) for s in stages]
    report(capsys, "(c) regional: " + " → ".join(f"{region} at +{offset:.1f} s" for region, offset in offsets))


def test_a_worker_killed_mid_stage_is_replaced_and_the_rollout_finishes_with_every_transition_once(stack, capsys):
    distribution = Distribution.objects.get(pk=stack.launch("kill"))
    first = distribution.stages.get(index=0)
    wait_for(lambda: Stage.objects.get(pk=first.pk).status in (Stage.Status.INSTALLING, Stage.Status.SOAKING),
             "the first stage starts", timeout=30, log=stack.worker_log)

    # Catch the worker inside distribution_advance: freeze it while its backend holds the distribution's row
    # lock, check the lock is still held (the transaction is open and cannot finish), then SIGKILL it.
    caught, deadline = False, time.monotonic() + 15
    with connection.cursor() as cursor:
        while not caught and time.monotonic() < deadline \
                and Stage.objects.get(pk=first.pk).status in (Stage.Status.INSTALLING, Stage.Status.SOAKING):
            for _ in range(500):
                cursor.execute(_LOCK_HOLDERS)
                if cursor.fetchall():
                    os.kill(stack.worker.pid, signal.SIGSTOP)
                    cursor.execute(_LOCK_HOLDERS)
                    caught = bool(cursor.fetchall())
                    if not caught:
                        os.kill(stack.worker.pid, signal.SIGCONT)
                    break
                time.sleep(0.002)
    stage_then = Stage.objects.get(pk=first.pk).status
    before = stage_transitions(distribution)
    killed_at = time.monotonic()
    stack.worker_kill()
    assert stage_then in (Stage.Status.INSTALLING, Stage.Status.SOAKING), "the kill came after the first stage"

    time.sleep(2 * TICK_SECONDS)  # nothing moves without a worker
    assert stage_transitions(distribution) == before
    stack.worker_start()
    distribution = stack.settles("kill")

    assert_completed_everywhere(stack, distribution, ["ro-kill"])
    where = "inside distribution_advance, holding the row lock" if caught else "between two ticks"
    report(capsys, f"(d) worker SIGKILLed {where} while stage 1 was {stage_then}; a new worker finished the "
                   f"rollout {time.monotonic() - killed_at:.1f} s after the kill, "
                   f"{len(stage_transitions(distribution))} transitions, each once")


def test_no_case_touched_another_region(stack):
    """Each distribution only ever assigned devices of the regions it targets."""
    for case, pk in stack.launched.items():
        regions = set(Device.objects.filter(assignments__distribution_id=pk).values_list("region", flat=True))
        assert regions == set(LAUNCHES[case]["target"]["regions"]), (case, regions)
    assert Device.objects.aggregate(n=Count("assignments"))["n"] == DEVICES
