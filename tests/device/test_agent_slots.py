"""Several model slots on one agent: independent swaps under load, removal, rollback from disk, per-slot refusals,
the applications' inference calls (Python and the local HTTP API) and their feedback, and the old state file."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from hotswap_device import Agent, NoActiveModel, UnknownInference
from hotswap_device.localapi import LocalApi
from hotswap_device.runtime import InvalidInputs
from tests.artifacts import onnx_model_bytes
from tests.device.fakeserver import FakeServer

SLOTS = ("detector", "recogniser", "orientation")


@pytest.fixture(scope="module")
def slot_models() -> dict[tuple[str, str], bytes]:
    """Real, distinct models for three slots (and a second version of the recogniser)."""
    return {("detector", "1.0.0"): onnx_model_bytes(hidden=5), ("recogniser", "1.0.0"): onnx_model_bytes(hidden=6),
            ("recogniser", "1.1.0"): onnx_model_bytes(hidden=7), ("orientation", "1.0.0"): onnx_model_bytes(hidden=11)}


def _desire(server: FakeServer, slot_models, *pairs: tuple[str, str], **options) -> None:
    for model, version in pairs:
        server.set_desired(model, version, slot_models[(model, version)], **options)


def _three_slots(server, make_agent, slot_models, **options):
    agent = make_agent(**options)
    _desire(server, slot_models, *((model, "1.0.0") for model in SLOTS))
    result = agent.run_once()
    assert {model: outcome.action for model, outcome in result.slots.items()} == dict.fromkeys(SLOTS, "installed")
    return agent


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)}


def test_it_runs_three_slots_and_reports_every_running_model(server, make_agent, slot_models):
    agent = _three_slots(server, make_agent, slot_models)

    models = server.checkins[-1]["models"]
    assert [m["model"] for m in models] == sorted(SLOTS)
    assert {m["model"]: m["sha256"] for m in models} == {
        model: hashlib.sha256(slot_models[(model, "1.0.0")]).hexdigest() for model in SLOTS}
    # Each slot's reports carry that slot's own sequence.
    assert {(i["model"], i["status"], i["sequence"]) for i in server.installs} == {
        (model, status, server.sequence(model)) for model in SLOTS for status in ("installed", "active")}
    assert sorted(p.name for p in agent.store.models.iterdir()) == sorted(f"{m}-1.0.0.onnx" for m in SLOTS)
    assert agent.run_once().status == "not_modified"  # one ETag covers the three slots


def test_it_swaps_one_slot_under_load_with_zero_dropped_calls_while_the_others_keep_serving(
        server, make_agent, slot_models):
    agent = _three_slots(server, make_agent, slot_models, window_seconds=3600)
    stop, swapping = threading.Event(), threading.Event()
    started, completed, during_swap = Counter(), Counter(), Counter()
    errors: list[BaseException] = []

    def application(model: str, seed: int) -> None:
        inputs = _inputs(seed)
        while not stop.is_set():
            started[model] += 1
            try:
                served = agent.infer(model, inputs)
            except BaseException as exc:  # anything escaping a call is a dropped inference
                errors.append(exc)
                continue
            assert served.outputs["output"].shape == (1, 2)
            completed[(model, served.version)] += 1
            if swapping.is_set():
                during_swap[model] += 1

    threads = [threading.Thread(target=application, args=(model, i)) for i, model in enumerate(SLOTS * 2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        _desire(server, slot_models, ("recogniser", "1.1.0"))
        swapping.set()
        result = agent.run_once()  # download, load, warm up and swap the recogniser while all three serve
        swapping.clear()
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    assert {model: outcome.action for model, outcome in result.slots.items()} == {
        "recogniser": "installed", "detector": "already_running", "orientation": "already_running"}
    assert errors == []
    assert sum(started.values()) == sum(completed.values())  # every call started was served
    assert completed[("recogniser", "1.0.0")] > 0 and completed[("recogniser", "1.1.0")] > 0
    assert during_swap["detector"] > 0 and during_swap["orientation"] > 0  # the others never stopped
    assert agent.runtime.active("detector").version == agent.runtime.active("orientation").version == "1.0.0"
    agent.flush_metrics()
    windows = Counter({(w["model"], w["version"]): w["inference_count"] for w in agent.state.pending_metrics})
    assert windows == completed  # the windows count exactly the calls served, per version
    assert all(w["error_count"] == 0 for w in agent.state.pending_metrics)


def test_it_removes_one_slot_deleting_its_files_and_keeps_the_others(server, make_agent, slot_models):
    agent = _three_slots(server, make_agent, slot_models)
    server.remove("orientation")

    result = agent.run_once()

    assert result.slots["orientation"].action == "removed"
    with pytest.raises(NoActiveModel):
        agent.infer("orientation", _inputs())
    assert agent.infer("detector", _inputs()).version == "1.0.0"
    assert sorted(p.name for p in agent.store.models.iterdir()) == ["detector-1.0.0.onnx", "recogniser-1.0.0.onnx"]
    [removed] = [i for i in server.installs if i["status"] == "removed"]
    assert (removed["model"], removed["version"], removed["sequence"]) == (
        "orientation", "1.0.0", server.sequence("orientation"))
    assert [m["model"] for m in server.checkins[-1]["models"]] == ["detector", "recogniser"]
    agent.state.etag = None  # the same removal again (a fresh answer): nothing more to do or report
    assert agent.run_once().slots["orientation"].action == "removed"
    assert len([i for i in server.installs if i["status"] == "removed"]) == 1


def test_it_rolls_one_slot_back_from_disk_without_a_download(server, make_agent, slot_models):
    agent = _three_slots(server, make_agent, slot_models)
    _desire(server, slot_models, ("recogniser", "1.1.0"))
    agent.run_once()
    _desire(server, slot_models, ("recogniser", "1.0.0"), rollback=True)

    result = agent.run_once()

    assert result.slots["recogniser"].action == "installed"
    assert agent.runtime.active("recogniser").version == "1.0.0"
    assert len(server.file_requests("/files/recogniser-1.0.0.onnx")) == 1  # only the first install downloaded it
    slot = agent.state.slots["recogniser"]
    assert (slot.current.version, slot.previous.version) == ("1.0.0", "1.1.0")
    # The other slots' files stay: each slot keeps its own active and previous model.
    assert {p.name for p in agent.store.models.iterdir()} >= {"detector-1.0.0.onnx", "orientation-1.0.0.onnx"}


def test_a_refusal_of_one_slot_does_not_block_another(server, make_agent, slot_models):
    agent = make_agent()
    _desire(server, slot_models, ("recogniser", "1.1.0"), ("detector", "1.0.0"))
    agent.run_once()
    # In one answer: a downgrade of the recogniser not marked rollback, and a new model.
    _desire(server, slot_models, ("recogniser", "1.0.0"), ("orientation", "1.0.0"))

    result = agent.run_once()

    assert result.slots["recogniser"].action == "refused" and result.slots["orientation"].action == "installed"
    assert agent.runtime.active("recogniser").version == "1.1.0"
    assert agent.runtime.active("orientation").version == "1.0.0"
    [refusal] = [i for i in server.installs if i["status"] == "refused"]
    assert refusal["model"] == "recogniser" and refusal["sequence"] == server.sequence("recogniser") == 2
    assert "older than the running 1.1.0" in refusal["error"]
    assert server.file_requests("/files/recogniser-1.0.0.onnx") == []
    # Sequences are per slot: the detector's 1 is not "lower" than the recogniser's 2.
    agent.state.etag = None
    assert agent.run_once().slots["detector"].action == "already_running"
    assert server.sequence("detector") == 1 and agent.state.slots["detector"].last_sequence == 1


def test_feedback_on_real_calls_is_the_accuracy_of_the_window(server, make_agent, slot_models):
    agent = _three_slots(server, make_agent, slot_models, window_seconds=3600)
    calls = [agent.infer("detector", _inputs(seed)) for seed in range(4)]
    predicted = [int(np.argmax(call.outputs["output"])) for call in calls]

    verdicts = [agent.feedback(calls[0].inference_id, predicted[0]),  # the class it predicted: right
                agent.feedback(calls[1].inference_id, 1 - predicted[1]),  # the other class: wrong
                agent.feedback(calls[2].inference_id, True),  # the application's own verdict
                agent.feedback(calls[3].inference_id, calls[3].outputs)]  # the expected outputs themselves

    assert verdicts == [True, False, True, True]
    with pytest.raises(UnknownInference):
        agent.feedback(calls[0].inference_id, True)  # one feedback per inference
    agent.flush_metrics()
    [window] = [w for w in agent.state.pending_metrics if w["model"] == "detector"]
    assert (window["inference_count"], window["labelled_count"], window["accuracy"]) == (4, 4, 0.75)
    assert agent.run_once().sent_metrics == 1
    assert server.metrics[-1]["accuracy"] == 0.75


def test_calls_that_do_not_fit_the_model_are_refused_and_not_counted(server, make_agent, slot_models):
    agent = _three_slots(server, make_agent, slot_models, window_seconds=3600)

    with pytest.raises(InvalidInputs, match="unknown input 'image'"):
        agent.infer("detector", {"image": np.zeros((1, 4), np.float32)})
    with pytest.raises(InvalidInputs, match="is float64, the model wants float32"):
        agent.infer("detector", {"input": np.zeros((1, 4))})

    assert agent.metrics.flush() == []


@pytest.fixture(scope="module")
def api_agent(slot_models, tmp_path_factory):
    """One agent running three slots behind its local API, shared by the API tests (they change no slot)."""
    with FakeServer() as fake:
        agent = Agent(fake.url, tmp_path_factory.mktemp("api-agent"), enroll_key=fake.enroll_key, device_id="cam-1",
                      warmup_runs=1, window_seconds=3600)
        api = LocalApi(agent, port=0).start()
        try:
            _desire(fake, slot_models, *((model, "1.0.0") for model in SLOTS))
            agent.run_once()
            yield agent, api
        finally:
            api.close()
            agent.close()


@pytest.fixture
def local_api(api_agent):
    agent, api = api_agent
    agent.metrics.flush()  # each test counts only its own calls
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield agent, client


def test_the_local_api_serves_calls_and_feedback_from_other_languages(local_api):
    agent, client = local_api
    rows = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -3.0, 0.0]]

    listed = client.get("/v1/models").json()["models"]
    as_list = {"dtype": "float32", "shape": [1, 4], "data": rows[0]}
    raw = base64.b64encode(np.array(rows[1], "<f4").tobytes()).decode()  # raw little-endian bytes
    as_bytes = {"dtype": "float32", "shape": [1, 4], "b64": raw}
    answers = [client.post("/v1/models/detector/infer", json={"inputs": {"input": tensor}})
               for tensor in (as_list, as_bytes, as_list)]
    first, second, third = (answer.json() for answer in answers)
    label = int(np.argmax(first["outputs"]["output"]["data"]))
    right = client.post("/v1/feedback", json={"inference_id": first["inference_id"], "label": label})
    wrong = client.post("/v1/feedback", json={"inference_id": second["inference_id"], "correct": False})
    off = {"output": {**third["outputs"]["output"], "data": [[v + 1 for v in third["outputs"]["output"]["data"][0]]]}}
    mismatch = client.post("/v1/feedback", json={"inference_id": third["inference_id"], "expected": off})

    assert [m["model"] for m in listed] == sorted(SLOTS)
    assert listed[0]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 4]}]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert (first["model"], first["version"]) == ("detector", "1.0.0")
    expected = agent.infer("detector", {"input": np.array([rows[0]], np.float32)}).outputs["output"]
    assert np.allclose(first["outputs"]["output"]["data"], expected)  # the model's real outputs, as JSON
    assert first["outputs"]["output"]["shape"] == [1, 2]
    second_expected = agent.infer("detector", {"input": np.array([rows[1]], np.float32)}).outputs["output"]
    assert np.allclose(second["outputs"]["output"]["data"], second_expected)  # raw bytes read as the same floats
    assert right.json() == {"inference_id": first["inference_id"], "correct": True}
    assert wrong.json()["correct"] is False
    assert mismatch.json()["correct"] is False  # its outputs were not the expected ones
    agent.flush_metrics()
    [window] = [w for w in agent.state.pending_metrics if w["model"] == "detector"]
    assert (window["inference_count"], window["labelled_count"], window["accuracy"]) == (5, 3, 0.3333)


ZEROS = {"inputs": {"input": {"dtype": "float32", "shape": [1, 4], "data": [0, 0, 0, 0]}}}


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field"), [
    ("post", "/v1/models/nothing/infer", ZEROS, 404, "MODEL_NOT_RUNNING", None),
    ("post", "/v1/models/detector/infer", {"inputs": {"input": {"dtype": "float32", "shape": [1, 4],
                                                                 "data": [0, 0]}}}, 400, "VALIDATION_ERROR",
     "inputs.input.data"),
    ("post", "/v1/models/detector/infer", {"inputs": {"input": {"dtype": "complex", "shape": [1],
                                                                 "data": [0]}}}, 400, "VALIDATION_ERROR",
     "inputs.input.dtype"),
    ("post", "/v1/models/detector/infer", {"inputs": {"other": {"dtype": "float32", "shape": [1, 4],
                                                                 "data": [0, 0, 0, 0]}}}, 400, "VALIDATION_ERROR",
     "inputs"),
    ("post", "/v1/feedback", {"inference_id": "nope", "correct": True}, 404, "INFERENCE_UNKNOWN", None),
    ("post", "/v1/feedback", {"inference_id": "nope", "correct": True, "label": 1}, 400, "VALIDATION_ERROR", "body"),
    ("get", "/v1/elsewhere", None, 404, "NOT_FOUND", None),
])
def test_the_local_api_answers_bad_requests_in_the_error_shape_and_counts_nothing(
        local_api, method, path, body, status, code, field):
    agent, client = local_api

    response = client.request(method.upper(), path, json=body) if body is not None else client.get(path)

    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if field:
        assert [d["field"] for d in error["details"]] == [field]
    assert agent.metrics.flush() == []


def test_the_local_api_refuses_what_a_web_page_could_send(local_api):
    _agent, client = local_api
    inputs = json.dumps({"inputs": {"input": {"dtype": "float32", "shape": [1, 4], "data": [0, 0, 0, 0]}}})

    as_form = client.post("/v1/models/detector/infer", content=inputs, headers={"Content-Type": "text/plain"})
    rebound = client.post("/v1/models/detector/infer", content=inputs,
                          headers={"Content-Type": "application/json", "Host": "attacker.example:8470"})

    assert (as_form.status_code, as_form.json()["error"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert (rebound.status_code, rebound.json()["error"]["code"]) == (403, "HOST_NOT_ALLOWED")


def test_an_old_single_model_state_file_becomes_that_model_s_slot(server, make_agent, slot_models, tmp_path):
    data = tmp_path / "agent"
    agent = make_agent(data)
    _desire(server, slot_models, ("recogniser", "1.0.0"), ("recogniser", "1.1.0"))
    agent.run_once()
    _desire(server, slot_models, ("recogniser", "1.1.0"))
    agent.run_once()
    agent.close()
    slot = agent.state.slots["recogniser"]
    # What a protocol-1 agent wrote: one model, one previous, one sequence for the device.
    (data / "state.json").write_text(json.dumps({
        "last_sequence": 7, "etag": '"v1-etag"', "poll_interval_seconds": 30.0,
        "current": {**slot.current.__dict__, "sequence": 7},
        "previous": slot.previous.__dict__ if slot.previous else None,
        "pending_installs": [{"model": "recogniser", "version": "1.1.0", "status": "active", "error": "kept"}],
        "pending_metrics": [], "rejected": None}))

    again = make_agent(data)

    assert again.runtime.active("recogniser").version == "1.1.0"  # restored from the migrated slot
    migrated = again.state.slots["recogniser"]
    assert (migrated.last_sequence, migrated.current.version) == (7, "1.1.0")
    assert again.state.etag is None and again.state.poll_interval_seconds == 30.0
    again.run_once()
    assert server.requests[-1]["headers"].get("If-None-Match") != '"v1-etag"'
    assert any(i.get("error") == "kept" for i in server.installs)  # the queued report still went out
    assert json.loads((data / "state.json").read_text())["state_version"] == 2


def test_a_server_that_speaks_another_protocol_gets_no_reports_dropped(server, make_agent):
    agent = make_agent()
    agent.run_once()
    agent.state.pending_installs = [{"model": "m", "version": "1.0.0", "status": "failed", "error": "kept"}]
    server.forced = [(400, {"error": {"code": "PROTOCOL_VERSION_UNSUPPORTED", "message": "This server speaks "
                                      "device protocol 3", "details": [{"field": "protocol", "message": "3"}]}})]

    result = agent.run_once()

    assert result.status == "rejected" and "PROTOCOL_VERSION_UNSUPPORTED" in result.error
    assert result.dropped == [] and len(agent.state.pending_installs) == 1
