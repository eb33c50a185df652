"""The fleet simulator: behaviour parsing, deterministic device attributes, metric windows, and a live run."""

from __future__ import annotations

import asyncio
import io
import random
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from devices.services.checkin import checkin_parse
from hotswap_device.client import CheckinExchange, encode, model_entry
from hotswap_device.fleet import (
    DEFAULT_BEHAVIOUR,
    Behaviour,
    BehaviourError,
    behaviour_for,
    device_spec,
    metric_window,
    parse_behaviour,
    parse_behaviours,
)
from hotswap_device.simulator import Fleet, FleetConfig, FleetStats

# --- behaviour parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("resnet-1.1.0=latency:40±5,errors:0.02,accuracy:0.85", Behaviour(40, 5, 0.02, 0.85)),
    ("resnet-1.1.0=latency:40+-5", Behaviour(40, 5, DEFAULT_BEHAVIOUR.error_rate, None)),
    ("resnet-1.1.0=latency: 12.5 ~ 0.5 ms, errors: 2%", Behaviour(12.5, 0.5, 0.02, None)),
    ("resnet-1.1.0=latency:40", Behaviour(40, DEFAULT_BEHAVIOUR.latency_sd_ms, DEFAULT_BEHAVIOUR.error_rate)),
    ("resnet-1.1.0=accuracy:0.9,accuracy:none", Behaviour()),
    ("resnet-1.1.0=", Behaviour()),
])
def test_it_parses_a_behaviour(spec, expected):
    assert parse_behaviour(spec) == ("resnet-1.1.0", expected)


@pytest.mark.parametrize(("spec", "message"), [
    ("latency:40", "expected KEY="),
    ("=latency:40", "expected KEY="),
    ("v=latency:fast", "latency must look like"),
    ("v=latency:-3", "latency must look like"),
    ("v=errors:1.5", "between 0 and 1"),
    ("v=errors:lots", "must be a number"),
    ("v=accuracy:120%", "between 0 and 1"),
    ("v=speed:3", "unknown parameter 'speed'"),
    ("v=latency", "has no value"),
])
def test_it_rejects_a_bad_behaviour_saying_why(spec, message):
    with pytest.raises(BehaviourError, match=message):
        parse_behaviour(spec)


def test_it_looks_behaviour_up_by_model_version_then_version_then_model_then_default():
    behaviours = parse_behaviours(["resnet-1.1.0=latency:40;2.0.0=latency:50", "yolo=latency:60", "*=latency:70"])

    assert behaviour_for(behaviours, "resnet", "1.1.0").latency_ms == 40
    assert behaviour_for(behaviours, "resnet", "2.0.0").latency_ms == 50
    assert behaviour_for(behaviours, "yolo", "1.0.0").latency_ms == 60
    assert behaviour_for(behaviours, "other", "1.0.0").latency_ms == 70
    assert behaviour_for({}, "other", "1.0.0") == DEFAULT_BEHAVIOUR == Behaviour(20, 3, 0.001, None)


# --- device attributes --------------------------------------------------------------------------------------


def test_device_attributes_are_deterministic_and_spread_evenly():
    specs = [device_spec(i, prefix="cam-", regions=("eu", "us", "ap"), types=("edge-camera", "gateway"))
             for i in range(600)]

    assert specs == [device_spec(i, prefix="cam-", regions=("eu", "us", "ap"), types=("edge-camera", "gateway"))
                     for i in range(600)]
    assert specs[7].device_id == "cam-00007"
    assert Counter(s.region for s in specs) == {"eu": 200, "us": 200, "ap": 200}
    assert Counter(s.device_type for s in specs) == {"edge-camera": 300, "gateway": 300}
    assert len(Counter((s.region, s.device_type) for s in specs)) == 6
    assert {s.capabilities["memory_mb"] for s in specs if s.device_type == "gateway"} == {4096, 8192, 16384}
    assert len({s.capabilities["gpu"] for s in specs}) > 1
    assert len({tuple(sorted(s.capabilities.items(), key=str)) for s in specs}) > 20


def test_device_attributes_do_not_depend_on_the_fleet_size():
    assert device_spec(41, prefix="sim-") == [device_spec(i, prefix="sim-") for i in range(100)][41]


# --- metric windows -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metric_windows_follow_the_behaviour_and_pass_the_servers_validation(make_version):
    make_version("m", "1.0.0")  # the server accepts reports on versions of its registry only
    rng, now = random.Random(1), datetime.now(UTC)
    behaviour = parse_behaviour("m-1.0.0=latency:40±5,errors:0.02,accuracy:0.85")[1]
    windows = [metric_window(behaviour, model="m", version="1.0.0", start=now - timedelta(seconds=60), end=now,
                             inference_rate=10, rng=rng) for _ in range(200)]

    # The body exactly as a device sends it (the shared protocol client builds it), with the server's parser.
    body, _headers = CheckinExchange(credential="hsd_x", models=[model_entry("m", "1.0.0", "0" * 64)],
                                     installs=[], metrics=windows[:100]).request()
    report = checkin_parse(encode(body), now=now)

    assert len(report.metrics) == 100
    assert 39 <= statistics.median(w["latency_ms"]["p50"] for w in windows) <= 41
    assert 46 <= statistics.median(w["latency_ms"]["p99"] for w in windows) <= 56
    count = sum(w["inference_count"] for w in windows)
    assert 0.9 * 600 * 200 < count < 1.1 * 600 * 200
    assert 0.015 < sum(w["error_count"] for w in windows) / count < 0.025
    assert 0.83 < statistics.mean(w["accuracy"] for w in windows) < 0.87
    assert all(sum(w["latency_histogram"]) == w["inference_count"] for w in windows)


def test_a_metric_window_never_spans_more_than_an_hour_and_an_empty_one_is_skipped():
    rng, now = random.Random(2), datetime.now(UTC)

    window = metric_window(Behaviour(), model="m", version="1.0.0", start=now - timedelta(hours=5), end=now,
                           inference_rate=1, rng=rng)
    idle = metric_window(Behaviour(), model="m", version="1.0.0", start=now - timedelta(seconds=1), end=now,
                         inference_rate=0, rng=rng)

    span = datetime.fromisoformat(window["window_end"]) - datetime.fromisoformat(window["window_start"])
    assert timedelta(minutes=59) < span < timedelta(hours=1)
    assert idle is None


# --- a live server --------------------------------------------------------------------------------------------


async def run_fleet_until(config: FleetConfig, done, timeout: float = 45.0) -> FleetStats:
    """Runs the fleet until done(stats) holds (or timeout), then stops it as Ctrl-C would."""
    stop = asyncio.Event()
    fleet = Fleet(config, stop)
    run = asyncio.create_task(fleet.run())
    deadline = time.monotonic() + timeout
    while not run.done() and not done(fleet.stats) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    return await run


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_simulated_fleet_enrolls_checks_in_installs_and_reports_against_a_live_server(tmp_path):
    from devices.models import Device, InstallReport, MetricWindow, ModelSlot
    from devices.services.desired_state import desired_state_set
    from devices.services.enrollment import enrollment_key_create
    from devices.services.telemetry import metric_windows_flush
    from models_app.services import model_version_upload
    from models_app.storage import artifact_store
    from models_app.uploads import PendingArtifact
    from tests.artifacts import onnx_model_bytes
    from tests.live import gunicorn_server

    _key, raw_key = enrollment_key_create(name="simulator test", created_by=None, max_uses=50)
    artifact = PendingArtifact.receive(artifact_store(), [onnx_model_bytes()], filename="m.onnx", max_bytes=10**9)
    version, _ = model_version_upload(artifact=artifact, name="simnet", version="1.1.0", framework="onnx",
                                      uploaded_by=None)
    state = tmp_path / "fleet.json"

    server_env = {"DEVICE_POLL_INTERVAL_SECONDS": "1", "THROTTLE_ENROLL": "1000/minute"}
    with gunicorn_server(env=server_env, workers=2) as (base_url, _process):
        def fleet(**extra) -> FleetConfig:
            return FleetConfig(server=base_url, enroll_key=raw_key, devices=50, prefix="live-", duration=60,
                               max_poll_seconds=1, concurrency=25, state_file=state, seed=3, **extra)

        # Each run lasts until the fleet has done its part (a loaded machine takes longer, not fails).
        first = asyncio.run(run_fleet_until(fleet(), lambda stats: stats.checked_in_devices == 50))

        assert first.fatal == "" and not first.errors, first.summary()
        assert (first.enrolled_now, first.checked_in_devices) == (50, 50), first.summary()
        assert Device.objects.filter(device_id__startswith="live-", status=Device.Status.ACTIVE).count() == 50

        desired_state_set(devices=Device.objects.filter(device_id__startswith="live-"), version=version, actor=None)
        second = asyncio.run(run_fleet_until(
            fleet(download=True, inference_rate=50, behaviours=parse_behaviours(["simnet-1.1.0=latency:40±5"])),
            lambda stats: stats.installs["active"] == 50 and stats.metric_windows >= 100))

    assert second.fatal == "" and not second.errors, second.summary()
    assert second.enrolled_now == 0, "the second run reuses the cached credentials"
    assert second.versions == Counter({"simnet-1.1.0": 50}), second.summary()
    sequences = dict(ModelSlot.objects.filter(device__device_id__startswith="live-", ai_model=version.ai_model)
                     .values_list("device_id", "sequence"))
    active = InstallReport.objects.filter(status=InstallReport.Status.ACTIVE, version=version)
    assert active.values("device").distinct().count() == 50
    assert all(report.sequence == sequences[report.device_id] for report in active)
    metric_windows_flush()  # what Celery beat does every METRIC_FLUSH_SECONDS
    windows = MetricWindow.objects.filter(version=version)
    assert windows.values("device").distinct().count() >= 45, second.summary()
    assert 37 <= statistics.median(windows.values_list("latency_p50_ms", flat=True)) <= 43


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_simulate_fleet_command_enrolls_or_registers_devices_and_runs_them(tmp_path):
    from django.core.management import call_command

    from devices.models import Device, EnrollmentKey
    from tests.live import gunicorn_server

    def simulate(*extra: str) -> str:
        out = io.StringIO()
        call_command("simulate_fleet", "--server", base_url, "--duration", "2.5", "--max-poll-seconds", "1",
                     "--state-file", str(tmp_path / "state.json"), "--quiet", *extra, stdout=out)
        return out.getvalue()

    with gunicorn_server(env={"DEVICE_POLL_INTERVAL_SECONDS": "1"}) as (base_url, _process):
        enrolled = simulate("--devices", "4", "--prefix", "enr-")
        registered = simulate("--devices", "6", "--prefix", "reg-", "--provision", "register")
        again = simulate("--devices", "6", "--prefix", "reg-")

    assert "created enrollment key" in enrolled and "enrolled 4 (4 new), 4 checked in" in enrolled, enrolled
    assert EnrollmentKey.objects.get().uses == 4
    assert "registered 6 devices" in registered and "enrolled 6 (0 new), 6 checked in" in registered, registered
    assert "registered" not in again.splitlines()[0] and "enrolled 6 (0 new), 6 checked in" in again, again
    assert Device.objects.filter(device_id__startswith="reg-", enrollment_key__isnull=True).count() == 6
    assert Device.objects.filter(device_id__startswith="enr-", enrollment_key__isnull=False).count() == 4
