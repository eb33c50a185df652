"""The agent loop against a fake server over real HTTP: enrollment, ETag, reports, refusals, swaps, rollback."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hotswap_device import EnrollmentFailed
from hotswap_device.__main__ import main
from tests.device.fakeserver import FakeServer

ROOT = Path(__file__).resolve().parents[2]


def statuses(server: FakeServer) -> list[tuple[str, str]]:
    return [(item["version"], item["status"]) for item in server.installs]


def test_it_enrolls_once_and_keeps_its_secrets_readable_only_by_itself(server, make_agent, tmp_path):
    agent = make_agent(device_type="edge-camera", region="eu-west", tags=["lobby"])

    result = agent.run_once()

    assert result.status == "ok"
    [enroll] = [r for r in server.requests if r["path"] == "/api/v1/devices/enroll"]
    assert enroll["body"]["device_id"] == "cam-1" and enroll["body"]["tags"] == ["lobby"]
    assert enroll["body"]["capabilities"]["cpu_cores"] >= 1
    data = tmp_path / "agent"
    for name in ("credential", "manifest_public_key.json", "device.json", "state.json"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert (data / "credential").read_text().strip() == server.credential

    again = make_agent(enroll_key=None)  # a restart needs no enrollment key any more
    assert again.run_once().status in ("ok", "not_modified")
    assert len([r for r in server.requests if r["path"] == "/api/v1/devices/enroll"]) == 1


def test_it_stops_when_the_enrollment_key_is_refused(server, make_agent):
    with pytest.raises(EnrollmentFailed, match="ENROLLMENT_KEY_INVALID"):
        make_agent(enroll_key="hse_wrong").run_once()
    with pytest.raises(EnrollmentFailed, match="no enrollment key"):
        make_agent(enroll_key=None).run_once()


def test_it_downloads_verifies_swaps_and_reports_installed_then_active(server, make_agent, models):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])

    result = agent.run_once()

    assert (result.action, result.version) == ("installed", "1.0.0")
    assert agent.runtime.active("resnet").version == "1.0.0"
    assert statuses(server) == [("1.0.0", "installed"), ("1.0.0", "active")]
    installed, active = server.installs
    assert installed["sequence"] == active["sequence"] == server.sequence("resnet")
    assert 0 <= installed["duration_ms"] <= active["duration_ms"]
    assert active["traceparent"] == server.traceparent  # links the report to the desired-state change
    # The reports went out at once, in a second check-in that already says what runs.
    assert server.checkins[-1]["protocol"] == 2
    assert server.checkins[-1]["models"] == [{"model": "resnet", "version": "1.0.0",
                                              "sha256": hashlib.sha256(models["1.0.0"]).hexdigest()}]
    assert (agent.store.models / "resnet-1.0.0.onnx").read_bytes() == models["1.0.0"]
    assert agent.state.slots["resnet"].last_sequence == server.sequence("resnet")


def test_it_sends_if_none_match_and_does_nothing_on_304(server, make_agent, models):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    agent.run_once()
    downloads = len(server.file_requests("/files/resnet-1.0.0.onnx"))

    result = agent.run_once()

    assert result.status == "not_modified" and result.action == "none"
    assert server.requests[-1]["headers"]["If-None-Match"] == server.etag
    assert len(server.file_requests("/files/resnet-1.0.0.onnx")) == downloads == 1
    assert "health" in server.checkins[-1] and 0 <= server.checkins[-1]["health"]["disk_percent"] <= 100


def test_it_honours_the_poll_interval_of_the_answer(server, make_agent):
    server.poll_interval = 17
    result = make_agent().run_once()

    assert 17 <= result.next_delay <= 17 * 1.1


def test_it_reports_when_the_version_it_runs_is_desired_under_a_new_sequence(server, make_agent, models):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    agent.run_once()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])  # e.g. a rollout now targets it

    result = agent.run_once()

    assert result.action == "already_running"
    assert server.installs[-1] | {"at": None} == {"model": "resnet", "version": "1.0.0", "status": "active",
                                                  "sequence": server.sequence("resnet"), "duration_ms": 0, "error": "",
                                                  "traceparent": server.traceparent, "at": None}
    assert len(server.file_requests("/files/resnet-1.0.0.onnx")) == 1


def test_it_upgrades_keeps_the_previous_model_and_rolls_back_without_a_download(server, make_agent, models):
    agent = make_agent()
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        server.set_desired("resnet", version, models[version])
        assert agent.run_once().action == "installed"
    # The active and the previous model stay on disk; the one before is gone.
    assert sorted(p.name for p in agent.store.models.iterdir()) == ["resnet-1.1.0.onnx", "resnet-1.2.0.onnx"]

    server.set_desired("resnet", "1.1.0", models["1.1.0"], rollback=True)
    result = agent.run_once()

    assert (result.action, agent.runtime.active("resnet").version) == ("installed", "1.1.0")
    assert len(server.file_requests("/files/resnet-1.1.0.onnx")) == 1  # only the original download
    assert statuses(server)[-2:] == [("1.1.0", "installed"), ("1.1.0", "active")]
    slot = agent.state.slots["resnet"]
    assert (slot.current.version, slot.previous.version) == ("1.1.0", "1.2.0")


def test_it_refuses_a_downgrade_not_marked_rollback_and_reports_it_once(server, make_agent, models):
    agent = make_agent()
    server.set_desired("resnet", "1.1.0", models["1.1.0"])
    agent.run_once()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])

    result = agent.run_once()
    agent.state.etag = None  # the next answer is a fresh 200 with the same manifest (a new URL)
    agent.run_once()

    assert result.action == "refused"
    assert agent.runtime.active("resnet").version == "1.1.0"
    refusals = [i for i in server.installs if i["status"] == "refused"]
    assert len(refusals) == 1
    assert refusals[0]["version"] == "1.0.0" and refusals[0]["sequence"] == server.sequence("resnet")
    assert "older than the running 1.1.0" in refusals[0]["error"]
    assert server.file_requests("/files/resnet-1.0.0.onnx") == []


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda s: setattr(s, "sign_with", Ed25519PrivateKey.generate()), "does not verify with the pinned key"),
    (lambda s: s.desired["resnet"].update(expires_in=-5), "The manifest expired at"),
    (lambda s: s.desired["resnet"].update(device_id="cam-2"), "is for device 'cam-2'"),
], ids=["other key", "expired", "other device"])
def test_it_refuses_and_reports_bad_manifests_without_downloading(server, make_agent, models, setup, expected):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    setup(server)

    result = agent.run_once()

    assert result.action == "refused" and agent.runtime.active("resnet") is None
    [report] = server.installs
    assert report["status"] == "refused" and expected in report["error"]
    assert server.file_requests("/files/resnet-1.0.0.onnx") == []


def test_it_refuses_a_lower_sequence(server, make_agent, models):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", models["1.0.0"], sequence=5)
    agent.run_once()
    server.set_desired("resnet", "1.1.0", models["1.1.0"], sequence=4)

    assert agent.run_once().action == "refused"
    assert "lower than the last accepted (5) for resnet" in server.installs[-1]["error"]


def test_it_reports_tampered_artifact_bytes_as_failed_and_removes_them(server, make_agent, models):
    agent = make_agent()
    tampered = bytearray(models["1.0.0"])
    tampered[100] ^= 0xFF
    server.set_desired("resnet", "1.0.0", models["1.0.0"], served=bytes(tampered))

    result = agent.run_once()

    assert result.action == "failed" and agent.runtime.active("resnet") is None
    [report] = server.installs
    assert report["status"] == "failed" and report["error"].startswith("sha256 mismatch")
    assert list(agent.store.models.iterdir()) == []
    agent.state.etag = None
    assert agent.run_once().action == "failed"  # the same manifest again: not downloaded nor reported again
    assert len(server.file_requests("/files/resnet-1.0.0.onnx")) == 1 and len(server.installs) == 1


def test_it_reports_a_model_onnxruntime_cannot_load_as_failed(server, make_agent):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", b"these bytes match their sha256 but are no model")

    assert agent.run_once().action == "failed"
    assert "could not load or run" in server.installs[-1]["error"]
    assert list(agent.store.models.iterdir()) == []


def test_it_resumes_an_interrupted_download_at_the_next_cycle(server, make_agent, models):
    agent = make_agent(download_attempts=1)
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    server.cut_after["/files/resnet-1.0.0.onnx"] = len(models["1.0.0"]) // 2

    first = agent.run_once()

    assert first.action == "deferred" and agent.runtime.active("resnet") is None
    assert agent.state.etag is None  # so the next check-in brings the manifest (and a fresh URL) again
    assert agent.store.partial_path("resnet", "1.0.0").exists()
    assert agent.run_once().action == "installed"
    retry = server.file_requests("/files/resnet-1.0.0.onnx")[-1]
    assert retry["headers"]["Range"].startswith("bytes=")
    assert (agent.store.models / "resnet-1.0.0.onnx").read_bytes() == models["1.0.0"]


def test_it_drops_exactly_the_items_a_400_names_and_resends_the_rest_at_once(server, make_agent, caplog):
    agent = make_agent()
    agent.run_once()
    window = {"model": "resnet", "version": "1.0.0", "window_start": "2026-01-01T00:00:00Z",
              "window_end": "2026-01-01T00:01:00Z", "inference_count": 1, "error_count": 0,
              "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0}}
    agent.state.pending_metrics = [{**window, "inference_count": n} for n in (1, 2, 3, 4)]
    server.validate = lambda body: [
        {"field": f"metrics[{i}].latency_ms.p99", "message": "Percentiles must satisfy p50 <= p95 <= p99."}
        for i, w in enumerate(body.get("metrics", [])) if w["inference_count"] in (2, 4)]

    with caplog.at_level(logging.WARNING, logger="hotswap_device"):
        result = agent.run_once()

    assert result.status == "not_modified"  # reports ride along with the conditional check-in
    assert result.sent_metrics == 2
    assert result.dropped == ["metrics[3]", "metrics[1]"]
    assert [w["inference_count"] for w in server.metrics] == [1, 3]
    assert agent.state.pending_metrics == []
    dropped_logs = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(dropped_logs) == 2 and "metrics[1].latency_ms.p99" in " ".join(dropped_logs)


def test_it_keeps_the_queue_and_backs_off_on_server_errors(server, make_agent, models):
    agent = make_agent(backoff_base_seconds=2.0, backoff_cap_seconds=5.0)
    agent.run_once()
    agent.state.pending_installs = [{"model": "resnet", "version": "1.0.0", "status": "failed", "error": "x"}]
    server.forced = [(503, {})] * 3

    delays = [agent.run_once() for _ in range(3)]

    assert [r.status for r in delays] == ["backoff"] * 3
    assert 1.0 <= delays[0].next_delay <= 2.0 and 2.0 <= delays[1].next_delay <= 4.0
    assert 2.5 <= delays[2].next_delay <= 5.0  # capped
    assert len(agent.state.pending_installs) == 1
    assert agent.run_once().status in ("ok", "not_modified")
    assert server.installs[-1]["error"] == "x" and agent.state.pending_installs == []


def test_it_backs_off_when_the_server_is_unreachable(tmp_path):
    from hotswap_device import Agent

    with FakeServer() as gone:
        url = gone.url
    agent = Agent(url, tmp_path / "agent", enroll_key="hse_x", device_id="cam-1")
    try:
        result = agent.run_once()
    finally:
        agent.close()

    assert result.status == "backoff" and "ConnectError" in result.error


def test_it_keeps_reports_across_a_restart(server, make_agent, tmp_path):
    agent = make_agent()
    agent.run_once()
    server.forced = [(500, {})]
    agent.state.pending_installs = [{"model": "resnet", "version": "1.0.0", "status": "failed", "error": "kept"}]
    agent.run_once()
    agent.close()

    make_agent().run_once()

    assert server.installs[-1]["error"] == "kept"


def test_it_restores_the_active_model_after_a_restart(server, make_agent, models):
    agent = make_agent()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    agent.run_once()
    agent.close()

    again = make_agent()

    assert again.runtime.active("resnet").version == "1.0.0"
    assert again.run_once().status == "not_modified"
    assert [m["version"] for m in server.checkins[-1]["models"]] == ["1.0.0"]


def test_it_reports_metric_windows_from_its_inference_threads_per_version(server, make_agent, models):
    agent = make_agent(synthetic_threads=2, synthetic_interval_seconds=0.001)
    agent.start_synthetic_load()
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    agent.run_once()
    time.sleep(0.3)
    server.set_desired("resnet", "1.1.0", models["1.1.0"])
    agent.run_once()
    time.sleep(0.3)
    agent.stop_synthetic_load()

    agent.flush_metrics()
    agent.run_once()

    windows = {w["version"]: w for w in server.metrics}
    assert set(windows) == {"1.0.0", "1.1.0"}
    for window in windows.values():
        assert window["inference_count"] > 0 and window["error_count"] == 0
        assert sum(window["latency_histogram"]) == window["inference_count"]
        assert window["latency_ms"]["p50"] <= window["latency_ms"]["p95"] <= window["latency_ms"]["p99"]


def test_it_runs_forever_until_stopped(server, make_agent, models):
    server.poll_interval = 1
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    agent = make_agent(synthetic_threads=1)
    stop = threading.Event()
    loop = threading.Thread(target=agent.run_forever, args=(stop,))
    loop.start()
    deadline = time.monotonic() + 10
    while agent.runtime.active("resnet") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    stop.set()
    loop.join(10)

    assert not loop.is_alive()
    assert agent.runtime.active("resnet").version == "1.0.0"
    # The last partial metric window is kept for the next start.
    assert agent.store.load_state().pending_metrics[0]["version"] == "1.0.0"


def test_it_runs_one_cycle_from_the_command_line(server, tmp_path, models, capsys):
    server.set_desired("resnet", "1.0.0", models["1.0.0"])

    code = main(["--server", server.url, "--enroll-key", server.enroll_key, "--data-dir", str(tmp_path / "cli"),
                 "--device-id", "cam-1", "--tags", "a,b", "--once", "--log-level", "ERROR"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["action"] == "installed"
    assert server.requests[0]["body"]["tags"] == ["a", "b"]
    assert main(["--server", server.url, "--data-dir", str(tmp_path / "other"), "--once",
                 "--log-level", "ERROR"]) == 2


def test_it_imports_nothing_from_django_or_the_server_and_runs_without_the_servers_code(tmp_path):
    # Run from an empty directory with only device/ on the path: the server's packages cannot be found there.
    code = ("import sys, hotswap_device, hotswap_device.__main__, hotswap_device.simulator; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'hotswap', 'models_app', "
            "'rollouts', 'devices', 'rest_framework')); print(bad)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "device")}
    output = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'device')!r}); "
                             + code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)

    assert output.stdout.strip() == "[]"


def test_it_stops_for_good_without_re_enrolling_when_the_device_is_decommissioned(server, make_agent):
    agent = make_agent()
    assert agent.run_once().status == "ok"
    server.forced = [(403, {"error": {"code": "DEVICE_DECOMMISSIONED", "message": "decommissioned", "details": [],
                                      "trace_id": "t", "timestamp": "2026-01-01T00:00:00Z"}})] * 10
    stop = threading.Event()
    loop = threading.Thread(target=agent.run_forever, args=(stop,))

    loop.start()
    loop.join(5)
    stopped_by_itself = not loop.is_alive()
    stop.set()
    loop.join(10)

    assert stopped_by_itself
    assert len(server.forced) == 9  # one check-in got the 403, and none followed
    assert len([r for r in server.requests if r["path"] == "/api/v1/devices/enroll"]) == 1
    assert agent.run_once().status == "decommissioned"
