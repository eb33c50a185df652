"""Models run the way they are used: declared profiles, sample inputs, multi-input and recurrent models, guesses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models_app.validation import Outcome, StepStatus
from models_app.validation.pipeline import run_pipeline
from tests.artifacts import RECURRENT_STATE, npz_bytes, recurrent_onnx_bytes, recurrent_reference, spatial_onnx_bytes


@pytest.fixture
def run(tmp_path, write_file, make_config):
    def run(model: bytes, **fields):
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        return run_pipeline(write_file("model.onnx", model), make_config(model, **fields), work_dir=work)

    return run


def inputs(profile: dict) -> dict[str, tuple]:
    return {item["name"]: (item["shape"], item["dtype"], item["source"]) for item in profile["inputs"]}


def test_without_a_profile_it_lists_every_guessed_dim_and_needs_approval(run):
    result = run(spatial_onnx_bytes())

    assert result.outcome == Outcome.NEEDS_APPROVAL, result.summary
    profile = result.profiles[0]
    assert profile["source"] == "guessed"
    assert inputs(profile) == {"x": ([1, 3, 224, 224], "float32", "guessed")}
    dims = {(g["dim"], g["value"]) for g in profile["guessed"]}
    assert dims == {("batch", 1), ("height", 224), ("width", 224)}
    assert "shapes guessed: x [1, 3, 224, 224]" in result.step("benchmark").detail
    assert result.summary.startswith("needs approval: shapes guessed (x[2] (height)=224, x[3] (width)=224)")
    assert "PUT /api/v1/models/{name}/input-profiles" in result.summary
    # The figures are shown but decide nothing; the checks that do not depend on shapes still ran.
    assert result.gate("max_latency_p99_ms").passed is None and result.gate("max_latency_p99_ms").measured > 0
    assert result.gate("max_memory_mb").passed is True


def test_it_takes_its_guesses_from_the_models_metadata(run):
    result = run(spatial_onnx_bytes(metadata={"height": "96", "width": "64"}))

    assert inputs(result.profiles[0])["x"][0] == [1, 3, 96, 64]
    assert {g["why"] for g in result.profiles[0]["guessed"] if g["dim"] in ("height", "width")} == \
        {"the model's metadata height=96", "the model's metadata width=64"}


def test_it_benchmarks_each_declared_profile_at_its_shapes_and_gates_on_the_real_figures(run):
    small = {"name": "1x1", "inputs": {"x": {"shape": [1, 3, 1, 1]}}}
    large = {"name": "256x256", "dims": {"height": 256, "width": 256}}
    measured = run(spatial_onnx_bytes(), profiles=[small, large], gates={"max_latency_p99_ms": None})
    by_name = {profile["name"]: profile for profile in measured.profiles}
    p50 = {name: profile["metrics"]["latency_p50_ms"] for name, profile in by_name.items()}
    # A threshold between the two: the small profile passes it, the large one does not.
    threshold = (p50["1x1"] * p50["256x256"]) ** 0.5

    gated = run(spatial_onnx_bytes(), profiles=[small, large], gates={"max_latency_p99_ms": threshold})

    assert measured.outcome == Outcome.PASSED, measured.summary
    assert p50["256x256"] > 10 * p50["1x1"], p50
    assert inputs(by_name["256x256"]) == {"x": ([1, 3, 256, 256], "float32", "declared")}
    assert {g["dim"] for g in by_name["256x256"]["guessed"]} == {"batch"}  # listed, but a batch of 1 is no guess
    assert gated.outcome == Outcome.FAILED
    assert "gate max_latency_p99_ms (256x256)" in gated.summary and "(1x1)" not in gated.summary


def test_every_input_of_a_recurrent_model_is_fed_at_its_rank_and_dtype(run):
    result = run(recurrent_onnx_bytes())

    assert result.step("benchmark").status == StepStatus.PASSED, result.step("benchmark").detail
    assert inputs(result.profiles[0]) == {"audio": ([1, 128], "float32", "guessed"),
                                          "state": ([2, 1, RECURRENT_STATE], "float32", "batch of 1"),
                                          "sr": ([], "int64", "model")}
    values = {item["name"]: item["values"] for item in result.profiles[0]["inputs"]}
    assert values["state"] == "zeros (recurrent state)" and values["sr"] == "16000 (a sample rate)"
    assert result.outcome == Outcome.NEEDS_APPROVAL


def test_a_declared_profile_feeds_state_back_and_a_wrong_one_fails_with_the_reason(run):
    vad = {"name": "16k", "inputs": {"audio": {"shape": [1, 512], "range": [-1, 1]}, "sr": {"value": 16000}},
           "feedback": {"stateN": "state"}}
    broken = {"name": "odd", "inputs": {"audio": {"shape": [1, 100]}}}

    good = run(recurrent_onnx_bytes(), profiles=[vad])
    bad = run(recurrent_onnx_bytes(), profiles=[broken])

    assert good.outcome == Outcome.PASSED, good.summary
    assert good.profiles[0]["feedback"] == {"stateN": "state"}
    assert inputs(good.profiles[0])["audio"] == ([1, 512], "float32", "declared")
    assert bad.outcome == Outcome.FAILED
    detail = bad.step("benchmark").detail
    assert "profile odd (audio float32 [1, 100]" in detail and "failed on its first inference" in detail
    assert "cannot be reshaped" in detail


def recurrent_test_set(samples: int = 12, *, wrong: int = 0, **overrides) -> bytes:
    rng = np.random.default_rng(5)
    audio = rng.uniform(-1, 1, (samples, 1, 512)).astype(np.float32)
    state = rng.uniform(-1, 1, (samples, 2, 1, RECURRENT_STATE)).astype(np.float32)
    sr = np.full(samples, 16000, np.int64)
    prob = np.stack([recurrent_reference(audio[i], state[i], 16000)[0] for i in range(samples)]).astype(np.float32)
    prob[:wrong] += 0.1
    arrays = {"audio": audio, "state": state, "sr": sr, "expected.prob": prob, **overrides}
    return npz_bytes(**{name: array for name, array in arrays.items() if array is not None})


def test_a_multi_input_test_set_is_the_benchmarks_input_and_its_expected_outputs_are_checked(run, write_file):
    result = run(recurrent_onnx_bytes(), test_set_path=write_file("vad.npz", recurrent_test_set(wrong=3)),
                 gates={"min_output_match": 0.7})

    assert result.outcome == Outcome.PASSED, result.summary
    assert result.profiles[0]["source"] == "sample file" and result.profiles[0]["samples"] == 12
    assert inputs(result.profiles[0]) == {"audio": ([1, 512], "float32", "sample file"),
                                          "state": ([2, 1, RECURRENT_STATE], "float32", "sample file"),
                                          "sr": ([], "int64", "sample file")}
    assert result.metrics["output_match"] == 9 / 12
    assert "outputs prob within tolerance on 9 of 12 samples" in result.step("accuracy").detail
    assert result.gate("min_output_match").passed is True


@pytest.mark.parametrize(("overrides", "message"), [
    ({"state": None}, "missing array(s) for input(s) state"),
    ({"volume": np.zeros(12, np.float32)}, "array(s) volume match no input of the model"),
    ({"sr": np.full(5, 16000, np.int64)}, "found audio: 12, state: 12, sr: 5"),
    ({"expected.loudness": np.zeros(12, np.float32)}, "expected output(s) loudness match no output"),
])
def test_sample_files_that_do_not_fit_fail_with_the_reason(run, write_file, overrides, message):
    result = run(recurrent_onnx_bytes(), test_set_path=write_file("vad.npz", recurrent_test_set(**overrides)))

    assert result.outcome == Outcome.FAILED
    assert message in result.step("benchmark").detail and message in result.step("accuracy").detail


def test_a_dimension_the_graph_fixes_is_taken_from_the_graph_not_guessed(run, classifier):
    model = onnx.load_from_string(classifier.model())
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"  # MatMul with a [4, 3] weight

    result = run(model.SerializeToString())

    assert result.outcome == Outcome.PASSED, result.summary
    assert inputs(result.profiles[0]) == {"input": ([1, 4], "float32", "batch of 1")}
    graph = next(g for g in result.profiles[0]["guessed"] if g["kind"] == "graph")
    assert (graph["dim"], graph["value"], graph["why"]) == ("features", 4,
                                                            "fixed by the graph: MatMul with a fixed [4, 3] weight")
