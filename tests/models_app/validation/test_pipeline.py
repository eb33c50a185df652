"""The pipeline's steps, run in-process (run_isolated runs exactly this code in its child)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models_app.validation import Outcome, StepStatus
from models_app.validation.pipeline import run_pipeline
from tests.artifacts import (
    classifier_onnx_bytes,
    custom_op_onnx_bytes,
    external_data_package_bytes,
    missing_initializer_onnx_bytes,
    npz_bytes,
    onnx_model_bytes,
    slow_onnx_bytes,
    zip_package_bytes,
)

CLASSIFIER_SCHEMA = {
    "declared_inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
    "declared_outputs": [{"name": "probabilities", "dtype": "float32", "shape": ["batch", 3]}],
}


def statuses(result) -> dict[str, str]:
    return {step.name: step.status for step in result.steps}


@pytest.fixture
def run(tmp_path):
    def run(path, config):
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        return run_pipeline(path, config, work_dir=work)

    return run


def test_it_measures_the_classifier_accuracy_exactly(run, write_file, make_config, classifier):
    model = classifier.model()
    config = make_config(model, test_set_path=write_file("test.npz", classifier.test_set()), **CLASSIFIER_SCHEMA)

    result = run(write_file("model.onnx", model), config)

    assert result.outcome == Outcome.PASSED, result.summary
    assert result.metrics["accuracy"] == classifier.expected_accuracy
    assert 0.9 < classifier.expected_accuracy < 1.0
    assert result.metrics["accuracy_samples"] == len(classifier.labels)
    assert result.gate("min_accuracy").passed is True
    assert "signature" in statuses(result) and result.step("signature").detail.endswith("matches the declared schema")


def test_it_reads_one_array_per_input_name_and_one_hot_labels(run, write_file, make_config, classifier):
    one_hot = np.eye(3, dtype=np.float32)[classifier.labels]
    test_set = npz_bytes(input=classifier.inputs.astype(np.float64), labels=one_hot)
    config = make_config(test_set_path=write_file("test.npz", test_set), accuracy_metric="top5")

    result = run(write_file("model.onnx", classifier.model()), config)

    # Three classes: every label is in the top five.
    assert result.metrics["accuracy"] == 1.0, result.summary


def test_it_fails_a_test_set_that_does_not_fit_the_model(run, write_file, make_config, classifier):
    test_set = classifier.test_set(labels=classifier.labels[:10])
    config = make_config(test_set_path=write_file("test.npz", test_set))

    result = run(write_file("model.onnx", classifier.model()), config)

    assert result.outcome == Outcome.FAILED
    assert result.step("accuracy").status == StepStatus.FAILED
    assert "same number of samples along its first axis; found input: 200, labels: 10" in \
        result.step("accuracy").detail
    assert result.gate("min_accuracy").passed is None


def test_it_spells_out_a_signature_mismatch(run, write_file, make_config, classifier):
    config = make_config(
        declared_inputs=[{"name": "input", "dtype": "float32", "shape": ["batch", 8]}],
        declared_outputs=[{"name": "scores", "dtype": "float32", "shape": ["batch", 3]}],
    )

    result = run(write_file("model.onnx", classifier.model()), config)

    assert result.outcome == Outcome.FAILED
    detail = result.step("signature").detail
    assert "input 'input': declared float32 [batch, 8], model has float32 [batch, 4]" in detail
    assert "declared output 'scores' is not in the model (model outputs: 'probabilities')" in detail
    assert "model output 'probabilities' (float32 [batch, 3]) is not declared" in detail
    assert result.summary.startswith("failed: signature: the model does not match its declared schema")
    # A schema mismatch does not stop the measurements: the report still has them.
    assert result.step("benchmark").status == StepStatus.PASSED


def test_it_accepts_equivalent_declarations(run, write_file, make_config, classifier):
    config = make_config(declared_inputs=[{"name": "input", "dtype": "tensor(float)", "shape": [1, 4]}],
                         declared_outputs=[{"name": "probabilities", "dtype": "float", "shape": ["N", None]}])

    result = run(write_file("model.onnx", classifier.model()), config)

    assert result.step("signature").status == StepStatus.PASSED, result.step("signature").detail


def test_it_generates_inputs_from_a_profiles_dims(run, write_file, make_config, classifier):
    result = run(write_file("model.onnx", classifier.model()),
                 make_config(profiles=[{"name": "batch8", "dims": {"batch": 8}}]))

    assert result.outcome == Outcome.PASSED, result.summary
    assert result.profiles[0]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [8, 4],
                                             "source": "declared", "values": "random normal"}]
    assert result.metrics["inferences"] == 20 and result.metrics["failed_inferences"] == 0


def test_it_validates_the_model_inside_a_zip_package(run, write_file, make_config, classifier):
    package = zip_package_bytes(classifier.model(), model_file="nets/classifier.onnx",
                                extra_entries={"README.md": b"not extracted"})
    config = make_config(package, detected_format="zip_package", **CLASSIFIER_SCHEMA)

    result = run(write_file("package.zip", package), config)

    assert result.outcome == Outcome.PASSED, result.summary
    assert result.step("format").data["model_file"] == "nets/classifier.onnx"


def test_it_extracts_a_package_models_external_data(run, write_file, make_config, tmp_path):
    package = external_data_package_bytes()

    result = run(write_file("package.zip", package), make_config(package, detected_format="zip_package"))

    assert result.outcome == Outcome.PASSED, result.summary
    assert result.step("format").data["external_data"] == ["weights.bin"]
    assert sorted(p.name for p in (tmp_path / "work").rglob("*") if p.is_file()) == ["model.onnx", "weights.bin"]


def test_it_refuses_external_data_outside_the_package(run, write_file, make_config):
    package = external_data_package_bytes(location="../../etc/passwd", model_file="model.onnx")

    result = run(write_file("package.zip", package), make_config(detected_format="zip_package"))

    assert result.outcome == Outcome.FAILED
    assert "points outside the package" in result.step("format").detail


def test_it_refuses_external_data_in_a_single_file_model(run, write_file, make_config):
    model = onnx.load_from_string(onnx_model_bytes())
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], location="/etc/passwd")
    model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL

    result = run(write_file("model.onnx", model.SerializeToString()), make_config())

    assert "external data files (/etc/passwd)" in result.step("format").detail
    assert statuses(result)["load"] == StepStatus.NOT_EXECUTED


def test_it_fails_a_truncated_protobuf(run, write_file, make_config):
    model = onnx_model_bytes()

    result = run(write_file("model.onnx", model[: len(model) // 2]), make_config())

    assert result.outcome == Outcome.FAILED
    assert result.step("format").detail.startswith("not a valid ONNX protobuf")
    assert [statuses(result)[name] for name in ("signature", "load", "benchmark")] == [StepStatus.NOT_EXECUTED] * 3


def test_it_fails_a_graph_with_a_missing_initializer(run, write_file, make_config):
    result = run(write_file("model.onnx", missing_initializer_onnx_bytes()), make_config())

    assert result.outcome == Outcome.FAILED
    assert "input 'w' of node" in result.step("format").detail
    assert result.summary.startswith("failed: format: the ONNX checker rejected the model")


def test_it_reports_what_onnxruntime_says_when_it_cannot_load(run, write_file, make_config):
    result = run(write_file("model.onnx", custom_op_onnx_bytes()), make_config())

    assert result.step("format").status == StepStatus.PASSED
    detail = result.step("load").detail
    assert detail.startswith("could not load: ") and "com.example:Mystery" in detail
    assert statuses(result)["benchmark"] == StepStatus.NOT_EXECUTED


def test_it_fails_integrity_before_looking_inside(run, write_file, make_config, classifier):
    config = make_config(expected_sha256="0" * 64, expected_size=3)

    result = run(write_file("model.onnx", classifier.model()), config)

    assert result.outcome == Outcome.FAILED
    assert "size is" in result.step("integrity").detail and "the record says 3" in result.step("integrity").detail
    assert {statuses(result)[name] for name in ("format", "load", "gates")} == {StepStatus.NOT_EXECUTED}


def test_it_records_gates_without_metrics_as_not_applicable(run, write_file, make_config, classifier):
    config = make_config(gates={"max_memory_mb": None})

    result = run(write_file("model.onnx", classifier.model()), config)

    assert result.outcome == Outcome.PASSED, result.summary
    not_applicable = {gate.name: gate.detail for gate in result.gates if gate.passed is None}
    assert not_applicable == {
        "max_memory_mb": "not applicable: the gate is switched off",
        "min_accuracy": "not applicable: no labelled test set was given",
        "max_latency_increase": "not applicable: no baseline measured side by side",
        "max_accuracy_drop": "not applicable: no baseline accuracy to compare with",
        "min_output_match": "not applicable: no expected outputs in the test set",
        "min_baseline_agreement": "not applicable: the gate is switched off",
    }
    assert statuses(result)["accuracy"] == statuses(result)["baseline"] == StepStatus.SKIPPED


def test_a_byte_identical_version_passes_and_a_twice_as_slow_one_fails_the_relative_gate(run, write_file,
                                                                                           make_config):
    # Measured side by side in one process: the same file as its own baseline, then twice the MatMuls.
    baseline = write_file("v1.onnx", slow_onnx_bytes(size=256, depth=4, batch=16))
    absolute_off = {"max_latency_p99_ms": None, "min_throughput_ips": None}

    same = run(baseline, make_config(baseline_path=baseline, gates=absolute_off, benchmark_runs=60))
    slower = run(write_file("v2.onnx", slow_onnx_bytes(size=256, depth=8, batch=16)),
                 make_config(baseline_path=baseline, gates=absolute_off, benchmark_runs=60))

    assert same.outcome == Outcome.PASSED, same.summary
    assert abs(same.baseline_deltas["latency_increase"]) < 0.2 and same.baseline_deltas["output_agreement"] == 1.0
    gate = slower.gate("max_latency_increase")
    assert gate.passed is False and gate.measured > 0.5 and slower.baseline_deltas["latency_p_value"] < 0.01, \
        slower.baseline_deltas
    assert "side by side" in gate.detail and "exceeds the maximum of 20%" in gate.detail
    assert slower.outcome == Outcome.FAILED and "gate max_latency_increase" in slower.summary
    assert "median latency" in slower.step("baseline").detail


def test_it_judges_accuracy_and_agreement_against_the_baseline_on_the_same_test_set(run, write_file, make_config,
                                                                                     classifier):
    worse = classifier_onnx_bytes(classifier.weights, classifier.bias + np.array([3.0, 0, 0], np.float32))
    config = make_config(test_set_path=write_file("test.npz", classifier.test_set()),
                         baseline_path=write_file("v1.onnx", worse), baseline_model_id="resnet-1.0.0",
                         gates={"min_baseline_agreement": 0.99})

    result = run(write_file("model.onnx", classifier.model()), config)

    assert result.baseline_deltas["accuracy_drop"] < 0  # better than its baseline
    assert result.gate("max_accuracy_drop").passed is True
    agreement = result.gate("min_baseline_agreement")
    assert agreement.passed is False and agreement.measured < 0.99
    assert "agree with the baseline's within tolerance" in result.step("baseline").detail


def test_it_records_frameworks_it_cannot_run_as_not_executed(run, write_file, make_config):
    content = b"TFL3 stand-in"
    config = make_config(content, framework="tflite", detected_format="tflite", format_details={"version": 3})

    result = run(write_file("model.tflite", content), config)

    assert result.outcome == Outcome.NOT_EXECUTED
    assert statuses(result)["integrity"] == statuses(result)["format"] == StepStatus.PASSED
    assert result.step("format").data["details"] == {"version": 3}
    assert {statuses(result)[name] for name in ("signature", "load", "benchmark", "accuracy", "baseline", "gates")} \
        == {StepStatus.NOT_EXECUTED}
    assert all(gate.passed is None for gate in result.gates)


def test_it_fails_a_classifier_whose_accuracy_is_below_the_gate(run, write_file, make_config, classifier):
    labels = (classifier.labels + 1) % 3
    config = make_config(test_set_path=write_file("test.npz", classifier.test_set(labels=labels)))

    result = run(write_file("model.onnx", classifier_onnx_bytes(classifier.weights, classifier.bias)), config)

    gate = result.gate("min_accuracy")
    assert gate.passed is False and "is below the minimum of 90%" in gate.detail
