"""A thousand simulated devices against the real stack: gunicorn, a Celery worker with beat, SeaweedFS.

The operator upgrades one region through the API; that region's devices download the artifact from its
presigned URL, verify it and report; the heartbeat flush makes the fleet list show what each device runs,
the other regions stay as they were, and a device that goes quiet turns offline and back online.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from concurrent.futures import Future

import pytest
import requests

from devices.models import Device, InstallReport
from devices.services.enrollment import enrollment_key_create
from hotswap.accounts.roles import Role
from hotswap_device.fleet import DEFAULT_REGIONS, device_spec
from hotswap_device.simulator import FleetConfig, FleetStats, run_fleet
from models_app.models import ModelVersion
from models_app.validation_runs import model_version_approve, version_is_distributable
from tests.devices.checkin_helpers import registry_version
from tests.e2e.fleets import register_fleet
from tests.live import celery_worker, gunicorn_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DEVICES = 1000
ENROLLED = 50  # the first devices enroll over HTTP; the rest were registered by an operator
POLL_SECONDS = 5
OFFLINE_AFTER_SECONDS = 15  # three missed check-ins
SERVER_ENV = {"DEVICE_POLL_INTERVAL_SECONDS": str(POLL_SECONDS), "THROTTLE_ENROLL": "100000/minute",
              "LOG_LEVEL": "WARNING"}
WORKER_ENV = {"HEARTBEAT_FLUSH_SECONDS": "1", "OFFLINE_CHECK_SECONDS": "1",
              "DEVICE_OFFLINE_AFTER_SECONDS": str(OFFLINE_AFTER_SECONDS), "METRIC_ROLLUP_SECONDS": "3600",
              # The worker validates both uploads next to a busy fleet: timing gates would judge the machine's load.
              "GATE_MAX_LATENCY_P99_MS": "5000", "GATE_MIN_THROUGHPUT_IPS": "1", "GATE_MAX_LATENCY_INCREASE": "100",
              "VALIDATION_BENCHMARK_RUNS": "20"}
PASSWORD = "0perator-Passw0rd"


class FleetRunner:
    """Simulated fleets on an event loop in a background thread, while the test acts as the operator."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: list[tuple[asyncio.Event, Future]] = []

    def start(self, config: FleetConfig) -> tuple[asyncio.Event, Future]:
        stop = asyncio.Event()
        fleet = (stop, asyncio.run_coroutine_threadsafe(run_fleet(config, stop=stop), self.loop))
        self.running.append(fleet)
        return fleet

    def stop(self, fleet: tuple[asyncio.Event, Future]) -> FleetStats:
        stop, future = fleet
        self.loop.call_soon_threadsafe(stop.set)
        return future.result(timeout=30)

    def close(self) -> None:
        for fleet in self.running:
            with contextlib.suppress(Exception):
                self.stop(fleet)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def wait_for(condition, what: str, timeout: float = 90.0):
    # Generous: a machine busy with other work takes longer, it should not fail.
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)
    return result


def test_a_thousand_devices_converge_region_by_region_and_go_offline_and_back(make_user, tmp_path):
    old, _ = registry_version(name="fleetnet", version="1.0.0")
    new, _ = registry_version(name="fleetnet", version="1.1.0", hidden=16)
    make_user(Role.OPERATOR, username="operator", password=PASSWORD)
    specs = [device_spec(i, prefix="fleet-") for i in range(1, DEVICES + 1)]
    per_region = Counter(s.region for s in specs)
    upgraded, unchanged = DEFAULT_REGIONS[0], DEFAULT_REGIONS[1:]
    credentials = register_fleet(specs[ENROLLED:])
    _key, enroll_key = enrollment_key_create(name="e2e fleet", created_by=None, max_uses=ENROLLED + 1)
    fleet_config = FleetConfig(server="", enroll_key=enroll_key, devices=DEVICES, prefix="fleet-",
                               credentials=credentials, poll_seconds=POLL_SECONDS, download=True, concurrency=100,
                               state_file=tmp_path / "fleet-state.json", seed=11)
    lone_config = FleetConfig(server="", enroll_key=enroll_key, devices=1, prefix="lone-", regions=("lab",),
                              poll_seconds=1, max_poll_seconds=1, state_file=tmp_path / "lone-state.json", seed=12)

    with gunicorn_server(env=SERVER_ENV, workers=2) as (base, _server), \
            celery_worker(beat=True, env=WORKER_ENV):
        fleet_config.server = lone_config.server = base
        api = requests.Session()
        token = api.post(f"{base}/api/v1/auth/token", json={"username": "operator", "password": PASSWORD},
                         timeout=30).json()["access"]
        api.headers["Authorization"] = f"Bearer {token}"

        def devices(**filters) -> dict:
            response = api.get(f"{base}/api/v1/devices", params={"page_size": 5, **filters}, timeout=30)
            assert response.status_code == 200, response.text
            return response.json()

        def set_desired(version, regions: list[str]) -> dict:
            response = api.post(f"{base}/api/v1/devices/desired", timeout=60,
                                json={"version": version.model_id, "regions": regions})
            assert response.status_code == 200, response.text
            return response.json()

        def active(version, region: str | None = None) -> int:
            reports = InstallReport.objects.filter(status=InstallReport.Status.ACTIVE, version=version)
            if region:
                reports = reports.filter(device__region=region)
            return reports.values("device").distinct().count()

        runner = FleetRunner()
        try:
            fleet, lone = runner.start(fleet_config), runner.start(lone_config)
            # Everyone enrolls or uses its issued credential, checks in, and the flush records it.
            wait_for(lambda: Device.objects.filter(device_id__startswith="fleet-", last_seen__isnull=False).count()
                     == DEVICES, "every device checked in and flushed")
            assert Device.objects.filter(device_id__startswith="fleet-", enrollment_key__isnull=False).count() \
                == ENROLLED

            # Both versions pass the worker's validation; the whole fleet runs 1.0.0; then the operator
            # upgrades one region, and one device goes quiet.
            both = ModelVersion.objects.filter(pk__in=[old.pk, new.pk])
            wait_for(lambda: not both.filter(status__in=("uploaded", "validating")).exists(),
                     "the worker validates both versions", timeout=180)
            # This test is about the fleet: a version a loaded machine failed on timing ships the way the product
            # allows it, with an Admin's recorded approval.
            admin = make_user(Role.ADMIN, username="fleet-admin", password=PASSWORD)
            for version in both.filter(status=ModelVersion.Status.FAILED):
                model_version_approve(version=version, actor=admin, reason="e2e: validated on a loaded 2-core machine")
            assert all(version_is_distributable(v) for v in both.all()), list(both.values_list("model_id", "status"))
            assert set_desired(old, list(DEFAULT_REGIONS))["changed"] == DEVICES
            wait_for(lambda: active(old) == DEVICES, "the fleet runs fleetnet-1.0.0")
            assert set_desired(new, [upgraded])["changed"] == per_region[upgraded]
            runner.stop(lone)

            wait_for(lambda: active(new, upgraded) == per_region[upgraded], f"{upgraded} reports 1.1.0 active")
            wait_for(lambda: devices(region=upgraded, version=new.model_id)["count"] == per_region[upgraded],
                     f"the fleet list shows {upgraded} running 1.1.0")
            for region in unchanged:
                assert devices(region=region, version=new.model_id)["count"] == 0
                assert devices(region=region, version=old.model_id)["count"] == per_region[region]
            [slot] = devices(region=upgraded)["results"][0]["slots"]
            assert (slot["model"], slot["state"]) == ("fleetnet", "in_sync")
            assert (slot["running"]["version"], slot["desired"]["version"]) == ("1.1.0", new.model_id)

            quiet = wait_for(lambda: devices(online="false")["results"], "the quiet device goes offline",
                             timeout=OFFLINE_AFTER_SECONDS + 45)
            assert [d["device_id"] for d in quiet] == ["lone-00001"]
            lone = runner.start(lone_config)
            wait_for(lambda: devices(search="lone-", online="true")["count"] == 1, "it is back online", timeout=30)
            assert devices(online="false")["count"] == 0

            lone_stats, stats = runner.stop(lone), runner.stop(fleet)
        finally:
            runner.close()

    assert stats.fatal == "" and not stats.errors and not stats.refusals, stats.summary()
    assert stats.versions == Counter({"fleetnet-1.1.0": per_region[upgraded],
                                      "fleetnet-1.0.0": DEVICES - per_region[upgraded]}), stats.summary()
    assert lone_stats.enrolled_now == 0, "the returning device reuses its credential"
