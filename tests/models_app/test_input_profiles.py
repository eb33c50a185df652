"""Input profiles through the API: declared, checked against the model at declaration, validated at, reported."""

import numpy as np
import pytest

from models_app.models import AIModel, ModelVersion
from models_app.validation_runs import validation_run
from tests.artifacts import RECURRENT_STATE, recurrent_onnx_bytes, recurrent_reference, spatial_onnx_bytes
from tests.models_app.conftest import npz_bytes, upload, upload_test_set

pytestmark = pytest.mark.django_db


def validated(client, content: bytes, name: str = "detector") -> ModelVersion:
    response = upload(client, content, name=name)
    assert response.status_code == 202, response.json()
    version = ModelVersion.objects.get(model_id=response.json()["model_id"])
    validation_run(report_id=version.validation_reports.get().pk)
    version.refresh_from_db()
    return version


def test_guessed_shapes_need_approval_until_a_declared_profile_validates_the_version(developer):
    response = upload(developer, spatial_onnx_bytes(), name="detector")
    assert response.json()["input_profiles"] == []
    assert "PUT /api/v1/models/{name}/input-profiles" in response.json()["input_profiles_hint"]
    version = ModelVersion.objects.get(model_id="detector-1.0.0")
    validation_run(report_id=version.validation_reports.get().pk)

    guessed = developer.get("/api/v1/models/detector-1.0.0/validation-report").json()
    again = developer.post("/api/v1/models/detector-1.0.0/validate", {"input_profiles": [
        {"name": "64x64", "inputs": {"x": {"shape": [1, 3, 64, 64], "dtype": "float32"}}}]}, format="json")
    validation_run(report_id=again.json()["validation_id"])
    declared = developer.get("/api/v1/models/detector-1.0.0/validation-report").json()

    assert guessed["status"] == "needs_approval" and guessed["summary"].startswith("needs approval: shapes guessed")
    assert guessed["profiles"][0]["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [1, 3, 224, 224],
                                                   "source": "guessed", "values": "random normal"}
    assert again.status_code == 202
    assert declared["status"] == "passed", declared["summary"]
    assert declared["profiles"][0]["name"] == "64x64"
    assert declared["profiles"][0]["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert declared["profiles"][0]["inputs"][0]["source"] == "declared"
    assert {gate["name"] for gate in declared["profiles"][0]["gates"]} >= {"max_latency_p99_ms", "min_output_match"}
    shown = developer.get("/api/v1/models/detector-1.0.0").json()
    assert shown["status"] == "passed" and shown["input_profiles_hint"] is None


CONTRADICTIONS = [
    ({"name": "a", "inputs": {"image": {"shape": [1, 3, 8, 8]}}}, "input_profiles[0].inputs.image",
     "The model has no input 'image' (inputs: x)."),
    ({"name": "a", "inputs": {"x": {"shape": [1, 3, 8]}}}, "input_profiles[0].inputs.x.shape",
     "Rank 3 contradicts the model's [batch, 3, height, width] (rank 4)."),
    ({"name": "a", "inputs": {"x": {"shape": [1, 4, 8, 8]}}}, "input_profiles[0].inputs.x.shape",
     "Dimension 1 is fixed at 3 in the model"),
    ({"name": "a", "inputs": {"x": {"shape": [1, 3, 8, 8], "dtype": "int64"}}}, "input_profiles[0].inputs.x.dtype",
     "The model takes float32 for 'x', not int64."),
    ({"name": "a", "inputs": {"x": {"shape": [64, 3, 4096, 4096]}}}, "input_profiles[0].inputs.x.shape",
     "over the validation memory limit"),
    ({"name": "a", "dims": {"height": 100_000, "width": 100_000}}, "input_profiles[0].dims",
     "Input 'x' would be [1, 3, 100000, 100000], 114441 MB alone, over the validation memory limit"),
    ({"name": "a", "samples": "nope"}, "input_profiles[0].samples", "The model has no test set 'nope'."),
    ({"name": "a", "inputs": {"x": {"shape": [1, 3, 8, 8], "zoom": 2}}}, "input_profiles[0].inputs.x.zoom",
     "Unknown field"),
]


def test_a_profile_that_contradicts_the_model_is_refused_at_declaration_and_changes_nothing(developer):
    validated(developer, spatial_onnx_bytes())  # once: the checks read the inputs its validation found

    for profile, field, message in CONTRADICTIONS:
        response = developer.put("/api/v1/models/detector/input-profiles", {"input_profiles": [profile]},
                                 format="json")

        assert response.status_code == 400, response.json()
        details = response.json()["error"]["details"]
        assert any(d["field"] == field and message in d["message"] for d in details), (profile, details)
        assert AIModel.objects.get(name="detector").input_profiles == []
    wrong = upload_test_set(developer, "detector", content=npz_bytes(image=np.zeros((2, 3, 8, 8), np.float32),
                                                                     **{"expected.boxes": np.zeros(2)}))
    assert wrong.status_code == 400
    assert [d["message"] for d in wrong.json()["error"]["details"]] == [
        "no array for input(s) x", "array(s) expected.boxes, image match no input of the model (inputs: x; expected "
        "outputs are 'expected.<output>' with outputs features)"]


def test_a_model_profile_applies_to_every_version_and_a_versions_own_replaces_it(developer):
    assert upload(developer, spatial_onnx_bytes(), name="detector").status_code == 202
    model_level = [{"name": "32", "dims": {"height": 32, "width": 32}}]
    own = [{"name": "16", "dims": {"height": 16, "width": 16}}]

    put_model = developer.put("/api/v1/models/detector/input-profiles", {"input_profiles": model_level},
                              format="json")
    put_version = developer.put("/api/v1/models/detector/versions/1.0.0/input-profiles", {"input_profiles": own},
                                format="json")
    viewer = developer.get("/api/v1/models/detector-1.0.0").json()

    assert put_model.status_code == 200 and put_model.json() == {"owner": "detector", "input_profiles": model_level}
    assert put_version.json()["owner"] == "detector-1.0.0"
    assert viewer["input_profiles"] == own


def test_output_tolerances_are_set_per_output_and_an_unknown_output_is_refused(developer):
    validated(developer, spatial_onnx_bytes())

    unknown = developer.put("/api/v1/models/detector/output-tolerances",
                            {"output_tolerances": {"boxes": {"max_abs": 0.1}}}, format="json")
    negative = developer.put("/api/v1/models/detector/output-tolerances",
                             {"output_tolerances": {"*": {"max_abs": -1}}}, format="json")
    text = developer.put("/api/v1/models/detector/output-tolerances",
                         {"output_tolerances": {"*": {"max_abs": "0.1"}}}, format="json")
    saved = developer.put("/api/v1/models/detector/output-tolerances",
                          {"output_tolerances": {"features": {"min_cosine": 0.99, "max_abs": None}}}, format="json")

    assert unknown.status_code == 400 and unknown.json()["error"]["details"] == [
        {"field": "output_tolerances.boxes", "message": "Unknown output."}]
    assert negative.status_code == text.status_code == 400
    assert saved.status_code == 200
    assert AIModel.objects.get(name="detector").output_tolerances == {"features": {"min_cosine": 0.99,
                                                                                   "max_abs": None}}


def test_a_device_class_names_the_profile_its_versions_are_headlined_and_gated_at(developer):
    response = upload(developer, spatial_onnx_bytes(), name="detector", target_device_type="edge-camera")
    assert response.status_code == 202, response.json()
    AIModel.objects.filter(name="detector").update(
        input_profiles=[{"name": "32", "dims": {"height": 32, "width": 32}},
                        {"name": "128", "dims": {"height": 128, "width": 128}}],
        quality_gates={"device_classes": {"edge-camera": {"profile": "128", "max_latency_p99_ms": 500}}})
    version = ModelVersion.objects.get(model_id="detector-1.0.0")

    report = validation_run(report_id=version.validation_reports.get().pk)

    assert report.status == "passed", report.summary
    assert [profile["name"] for profile in report.result["profiles"]] == ["128", "32"]
    assert report.gates_applied["max_latency_p99_ms"] == 500 and "profile" not in report.gates_applied
    assert report.result["metrics"]["latency_p50_ms"] == report.result["profiles"][0]["metrics"]["latency_p50_ms"]


def test_a_recurrent_model_validates_with_sample_inputs_named_by_its_profile(developer):
    samples = 6
    rng = np.random.default_rng(2)
    audio = rng.uniform(-1, 1, (samples, 1, 512)).astype(np.float32)
    state = np.zeros((samples, 2, 1, RECURRENT_STATE), np.float32)
    prob = np.stack([recurrent_reference(audio[i], state[i], 16000)[0] for i in range(samples)]).astype(np.float32)
    upload(developer, recurrent_onnx_bytes(), name="vad")
    assert upload_test_set(developer, "vad", name="speech", content=npz_bytes(
        audio=audio, state=state, sr=np.full(samples, 16000, np.int64), **{"expected.prob": prob})).status_code == 201
    assert upload_test_set(developer, "vad", name="no-state", content=npz_bytes(
        audio=audio, sr=np.full(samples, 16000, np.int64))).status_code == 201  # the model's inputs are not known yet
    declared = developer.put("/api/v1/models/vad/input-profiles", {"input_profiles": [
        {"name": "speech", "samples": "speech", "feedback": {"stateN": "state"}}]}, format="json")
    version = ModelVersion.objects.get(model_id="vad-1.0.0")

    report = validation_run(report_id=version.validation_reports.get().pk)

    assert declared.status_code == 200, declared.json()
    assert report.status == "passed", report.summary
    profile = report.result["profiles"][0]
    assert profile["source"] == "sample file" and profile["samples"] == samples
    assert {item["name"]: item["shape"] for item in profile["inputs"]} == {
        "audio": [1, 512], "state": [2, 1, RECURRENT_STATE], "sr": []}
    refused = developer.put("/api/v1/models/vad/input-profiles", {"input_profiles": [
        {"name": "partial", "samples": "no-state"}]}, format="json")  # now they are
    assert refused.status_code == 400
    assert refused.json()["error"]["details"] == [{"field": "input_profiles[0].samples",
                                                   "message": "Test set 'no-state': no array for input(s) state."}]
