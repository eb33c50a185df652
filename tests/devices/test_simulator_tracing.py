"""The fleet simulator's device-side spans: each install is a model.swap in the distribution's trace, as the agent's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from opentelemetry.trace import StatusCode

from hotswap_device import tracing
from hotswap_device.fleet import device_spec
from hotswap_device.simulator import FleetConfig, main
from tests.devices.test_simulator import run_fleet_until
from tests.devices.test_simulator_protocol import FakeServer, _until, _with_fleet, config
from tests.spans import children, named, recording, traceparent_of

# What FakeServer's check-in answers carry: the distribution's trace and span.
ANSWER_TRACE, ANSWER_SPAN = int("ab" * 16, 16), int("cd" * 8, 16)
ANSWER_TRACEPARENT = f"00-{'ab' * 16}-{'cd' * 8}-01"


@pytest.fixture
def spans():
    """The simulator's spans go to an in-memory exporter for the test."""
    with recording(tracing.use_provider) as exporter:
        yield exporter


@pytest.fixture
def no_tracing():
    previous = tracing.use_provider(None)
    yield
    tracing.use_provider(previous)


async def _install_everywhere(server: FakeServer) -> None:
    """Once the 3 devices checked in, desire 1.1.0 on all of them and wait until each reports it active."""
    await _until(lambda: len(server.devices) == 3)
    server.set_desired(server.devices, model="resnet", version="1.1.0", content=b"model-bytes")
    await _until(lambda: len(server.installs_of("active")) == 3)


def test_each_install_is_a_model_swap_under_the_answers_traceparent_and_its_reports_carry_the_swap(tmp_path, spans):
    server = FakeServer()

    stats = asyncio.run(_with_fleet(config(server, tmp_path, devices=3), lambda: _install_everywhere(server)))

    assert stats.versions == Counter({"resnet-1.1.0": 3})
    swaps = {swap.attributes["device.id"]: swap for swap in named(spans, "model.swap")}
    assert sorted(swaps) == sorted(server.devices) and len(named(spans, "model.swap")) == 3
    for device_id, swap in swaps.items():
        assert (swap.context.trace_id, swap.parent.span_id) == (ANSWER_TRACE, ANSWER_SPAN)
        assert swap.attributes["model.id"] == "resnet-1.1.0" and swap.attributes["manifest.sequence"] == 1
        assert swap.attributes["install.outcome"] == "installed" and swap.attributes["device.simulated"] is True
        assert swap.status.status_code == StatusCode.UNSET
        steps_of = children(spans, swap)
        assert [step.name for step in steps_of] == ["model.verify", "model.download", "model.load"]
        verify, download, load = steps_of
        assert verify.attributes["verify.subject"] == "manifest"
        assert download.attributes["download.simulated"] is True and download.attributes["artifact.size"] == 11
        assert load.attributes["device.simulated"] is True
        # Both reports of the install link to this device's swap, not to the distribution directly.
        reports = [item for d, item in server.installs if d == device_id]
        assert [r["status"] for r in reports] == ["installed", "active"]
        assert {r["traceparent"] for r in reports} == {traceparent_of(swap)} != {ANSWER_TRACEPARENT}


def test_a_tampered_download_and_a_refused_manifest_are_failed_swaps_and_reported_with_them(tmp_path, spans):
    server = FakeServer()

    async def steps():
        await _until(lambda: len(server.devices) == 3)
        good, tampered, forged = sorted(server.devices)
        server.set_desired([good], model="resnet", version="1.1.0", content=b"genuine")
        server.set_desired([tampered], model="resnet", version="1.1.0", content=b"genuine!", served=b"tampered")
        server.set_desired([forged], model="resnet", version="1.2.0", content=b"v120", tamper="signature")
        await _until(lambda: len(server.installs_of("active")) == 1 and len(server.installs_of("failed")) == 1
                     and len(server.installs_of("refused")) == 1)

    asyncio.run(_with_fleet(config(server, tmp_path, devices=3, download=True), steps))

    by_device: dict[str, list] = {}
    for swap in named(spans, "model.swap"):
        by_device.setdefault(swap.attributes["device.id"], []).append(swap)
    good, tampered, forged = (by_device[d][0] for d in sorted(server.devices))

    assert good.attributes["install.outcome"] == "installed" and good.status.status_code == StatusCode.UNSET
    assert [(s.name, s.attributes.get("verify.subject")) for s in children(spans, good)] == [
        ("model.verify", "manifest"), ("model.download", None), ("model.verify", "artifact"), ("model.load", None)]
    assert children(spans, good)[1].attributes["download.bytes"] == len(b"genuine")

    assert tampered.attributes["install.outcome"] == "failed" and tampered.status.status_code == StatusCode.ERROR
    assert "sha256 mismatch" in tampered.status.description
    check = children(spans, tampered)[-1]
    assert (check.name, check.attributes["verify.subject"], check.status.status_code) == (
        "model.verify", "artifact", StatusCode.ERROR)
    assert "model.load" not in [s.name for s in children(spans, tampered)]
    assert server.installs_of("failed")[tampered.attributes["device.id"]]["traceparent"] == traceparent_of(tampered)

    assert forged.attributes["install.outcome"] == "refused" and forged.status.status_code == StatusCode.ERROR
    assert "signature" in forged.status.description
    assert [(s.name, s.status.status_code) for s in children(spans, forged)] == [("model.verify", StatusCode.ERROR)]
    assert server.installs_of("refused")[forged.attributes["device.id"]]["traceparent"] == traceparent_of(forged)
    assert len(by_device[forged.attributes["device.id"]]) == 1, "a refusal is one swap, not one per check-in"


def test_without_tracing_it_records_nothing_and_reports_with_the_servers_traceparent(tmp_path, no_tracing):
    server = FakeServer()

    stats = asyncio.run(_with_fleet(config(server, tmp_path, devices=3, download=True),
                                    lambda: _install_everywhere(server)))

    assert stats.versions == Counter({"resnet-1.1.0": 3}) and stats.errors == Counter()
    assert not tracing.enabled()
    assert {item["traceparent"] for _, item in server.installs} == {ANSWER_TRACEPARENT}


def test_the_command_line_refuses_an_unknown_exporter(monkeypatch, capsys, no_tracing):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")

    with pytest.raises(SystemExit) as exit_info:
        main(["--server", "http://127.0.0.1:9", "--devices", "1", "--no-state"])

    assert exit_info.value.code == 2
    assert "unknown exporter jaeger" in capsys.readouterr().err
    assert not tracing.enabled()


# --- a live server --------------------------------------------------------------------------------------------


def _fleet_with_a_desired_version(prefix: str, count: int):
    """`count` registered devices (the simulator's specs) with an uploaded version desired; (version, ids)."""
    from devices.models import Device
    from devices.services.desired_state import desired_state_set
    from devices.services.registry import device_register
    from models_app.services import model_version_upload
    from models_app.storage import artifact_store
    from models_app.uploads import PendingArtifact
    from tests.artifacts import onnx_model_bytes

    specs = [device_spec(i, prefix=prefix) for i in range(1, count + 1)]
    for spec in specs:
        device_register(device_id=spec.device_id, name=spec.name, device_type=spec.device_type, region=spec.region,
                        tags=spec.tags, **spec.capabilities)
    artifact = PendingArtifact.receive(artifact_store(), [onnx_model_bytes()], filename="m.onnx", max_bytes=10**9)
    version, _ = model_version_upload(artifact=artifact, name="tracenet", version="1.0.0", framework="onnx",
                                      uploaded_by=None)
    result = desired_state_set(devices=Device.objects.filter(device_id__startswith=prefix), version=version)
    assert result.changed == count
    return version, [spec.device_id for spec in specs]


def _desired_traceparents(device_ids: list[str]) -> dict[str, str]:
    from devices.models import ModelSlot

    return dict(ModelSlot.objects.filter(device__device_id__in=device_ids)
                .values_list("device__device_id", "traceparent"))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_simulated_fleet_against_a_live_server_continues_each_devices_desired_state_trace(tmp_path, spans):
    from devices.models import Device, InstallReport
    from devices.services.credentials import device_credential_issue
    from tests.live import gunicorn_server

    version, device_ids = _fleet_with_a_desired_version("trc-", 3)
    credentials = {d.device_id: device_credential_issue(device=d)[1]
                   for d in Device.objects.filter(device_id__in=device_ids)}
    desired = _desired_traceparents(device_ids)

    with gunicorn_server(env={"DEVICE_POLL_INTERVAL_SECONDS": "1"}) as (base_url, _process):
        stats = asyncio.run(run_fleet_until(
            FleetConfig(server=base_url, devices=3, prefix="trc-", credentials=credentials, state_file=None,
                        poll_seconds=1, max_poll_seconds=1, download=True, duration=60, seed=5),
            lambda stats: stats.installs["active"] == 3))

    assert stats.fatal == "" and not stats.errors and stats.versions == Counter({"tracenet-1.0.0": 3}), stats.summary()
    swaps = {swap.attributes["device.id"]: swap for swap in named(spans, "model.swap")}
    assert sorted(swaps) == device_ids
    for device_id, swap in swaps.items():
        _, trace_id, span_id, _ = desired[device_id].split("-")
        assert (swap.context.trace_id, swap.parent.span_id) == (int(trace_id, 16), int(span_id, 16))
        assert swap.attributes["model.id"] == "tracenet-1.0.0" and swap.attributes["install.outcome"] == "installed"
        assert [s.name for s in children(spans, swap)] == ["model.verify", "model.download", "model.verify",
                                                           "model.load"]
        assert children(spans, swap)[1].attributes["download.bytes"] == version.size_bytes
        stored = InstallReport.objects.filter(device__device_id=device_id, version=version)
        assert sorted(stored.values_list("status", "traceparent")) == [
            ("active", traceparent_of(swap)), ("installed", traceparent_of(swap))]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_runstacks_demo_fleet_command_prints_the_swaps_with_the_console_exporter(tmp_path):
    """runstack starts `manage.py simulate_fleet --provision register`; OTEL_TRACES_EXPORTER=console prints spans."""
    from devices.models import InstallReport
    from tests.live import ROOT, gunicorn_server, test_database_url

    version, device_ids = _fleet_with_a_desired_version("con-", 2)
    desired = _desired_traceparents(device_ids)
    output = tmp_path / "simulator.out"
    environment = {**os.environ, "DATABASE_URL": test_database_url(), "DJANGO_SETTINGS_MODULE": "hotswap.settings.test",
                   "OTEL_TRACES_EXPORTER": "console", "PYTHONUNBUFFERED": "1"}
    environment.pop("OTEL_SERVICE_NAME", None)

    with gunicorn_server(env={"DEVICE_POLL_INTERVAL_SECONDS": "1"}) as (base_url, _process):
        with open(output, "wb") as out:
            simulator = subprocess.Popen(
                [sys.executable, "manage.py", "simulate_fleet", "--server", base_url, "--devices", "2", "--prefix",
                 "con-", "--provision", "register", "--no-state", "--download", "--poll-seconds", "1",
                 "--max-poll-seconds", "1", "--duration", "120", "--quiet"],
                cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            active = InstallReport.objects.filter(device__device_id__in=device_ids, status="active")
            while active.count() < 2 and simulator.poll() is None and time.monotonic() < deadline:
                time.sleep(0.3)
            simulator.send_signal(signal.SIGINT)  # Ctrl-C: a graceful stop
            assert simulator.wait(timeout=30) == 0, output.read_text()[-3000:]
        finally:
            if simulator.poll() is None:
                simulator.kill()
                simulator.wait()

    lines = [json.loads(line) for line in output.read_text().splitlines() if line.startswith('{"name"')]
    swaps = {span["attributes"]["device.id"]: span for span in lines if span["name"] == "model.swap"}
    assert sorted(swaps) == device_ids, output.read_text()[-3000:]
    for device_id, swap in swaps.items():
        _, trace_id, span_id, _ = desired[device_id].split("-")
        assert (swap["context"]["trace_id"], swap["parent_id"]) == (f"0x{trace_id}", f"0x{span_id}")
        assert swap["resource"]["attributes"]["service.name"] == "hotswap-simulator"
        assert swap["attributes"]["device.simulated"] is True
        steps = [s["name"] for s in lines if s.get("parent_id") == swap["context"]["span_id"]]
        assert sorted(steps) == ["model.download", "model.load", "model.verify", "model.verify"]
        reported = InstallReport.objects.get(device__device_id=device_id, version=version, status="active")
        assert reported.traceparent == f"00-{swap['context']['trace_id'][2:]}-{swap['context']['span_id'][2:]}-01"
