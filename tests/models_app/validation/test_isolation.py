"""run_isolated: the pipeline in a limited child process, and every way that child can end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models_app.validation import Outcome, ResourceLimits, StepStatus, child, isolation, run_isolated
from tests.artifacts import allocation_bomb_onnx_bytes, endless_loop_onnx_bytes, slow_onnx_bytes, tflite_bytes
from tests.models_app.validation.conftest import TEST_LIMITS

ROOT = Path(__file__).resolve().parents[3]


def test_it_measures_the_classifier_accuracy_in_the_child(write_file, make_config, classifier):
    model = classifier.model()
    config = make_config(model, test_set_path=write_file("test.npz", classifier.test_set()),
                         warmup_runs=10, benchmark_runs=100)

    result = run_isolated(write_file("model.onnx", model), config)

    assert result.outcome == Outcome.PASSED, result.summary
    assert result.metrics["accuracy"] == classifier.expected_accuracy
    assert result.metrics["inferences"] == 100 and result.metrics["error_rate"] == 0.0
    metrics = result.metrics
    assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"] <= metrics["latency_p99_ms"]
    assert metrics["throughput_ips"] > 10 and metrics["memory_mb"] > 0 and metrics["load_ms"] > 0
    assert [step.name for step in result.steps] == list(isolation.STEP_NAMES)
    assert result.environment["onnxruntime"] and result.environment["intra_op_threads"] == 1
    assert result.isolation["returncode"] == 0 and result.isolation["timed_out"] is False
    # What the Django side stores: plain JSON that reads back to the same report.
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert type(result).from_dict(data).to_dict() == data


def test_it_fails_the_latency_gate_of_a_slow_model_and_says_by_how_much(write_file, make_config):
    config = make_config(warmup_runs=1, benchmark_runs=5, gates={"max_latency_p99_ms": 5})

    result = run_isolated(write_file("slow.onnx", slow_onnx_bytes()), config)

    gate = result.gate("max_latency_p99_ms")
    assert gate.passed is False and gate.threshold == 5 and gate.measured > 5
    assert gate.measured == result.metrics["latency_p99_ms"]
    # Figures are printed as people read them: 2 decimals, none from 100 ms up (a loaded machine).
    shown = f"{gate.measured:.0f}" if gate.measured >= 100 else f"{gate.measured:.2f}"
    assert f"p99 latency {shown} ms exceeds the maximum of 5 ms by" in gate.detail
    assert result.outcome == Outcome.FAILED
    assert result.summary.startswith("failed: gate max_latency_p99_ms: p99 latency")
    assert result.step("gates").status == StepStatus.FAILED


def test_it_survives_an_allocation_of_tens_of_gigabytes(write_file, make_config, classifier):
    result = run_isolated(write_file("bomb.onnx", allocation_bomb_onnx_bytes()), make_config())

    assert result.outcome == Outcome.FAILED
    assert result.step("benchmark").status == StepStatus.FAILED
    assert "exceeded the memory limit of 1024 MB" in result.step("benchmark").detail
    assert "exceeded the memory limit of 1024 MB" in result.summary
    assert result.metrics["error_rate"] == 1.0 and result.gate("max_error_rate").passed is False
    # The parent lives on and validates the next model normally.
    assert run_isolated(write_file("ok.onnx", classifier.model()), make_config()).outcome == Outcome.PASSED


def test_it_holds_a_model_to_the_memory_limit_below_physical_memory(write_file, make_config):
    # 2 GB fits in this machine's RAM: only RLIMIT_AS stops it.
    bomb = allocation_bomb_onnx_bytes(op="Expand", elements=512 * 1024**2)

    result = run_isolated(write_file("bomb.onnx", bomb), make_config())

    assert result.outcome == Outcome.FAILED
    assert "exceeded the memory limit of 1024 MB" in result.step("benchmark").detail
    assert result.isolation["peak_rss_mb"] < 1024


def test_it_times_out_a_model_that_runs_forever(write_file, make_config):
    limits = ResourceLimits(cpu_seconds=60, wall_seconds=5, memory_mb=1024)
    started = time.monotonic()

    result = run_isolated(write_file("endless.onnx", endless_loop_onnx_bytes()), make_config(limits=limits))

    assert time.monotonic() - started < 15
    assert result.outcome == Outcome.FAILED
    assert result.summary == "failed: benchmark: timed out after 5 s"
    assert result.step("benchmark").status == StepStatus.FAILED
    assert result.step("load").status == StepStatus.PASSED  # what ran before the kill is kept
    assert result.step("accuracy").detail == "not run: the validation process timed out after 5 s"
    assert result.isolation["timed_out"] is True and result.isolation["signal"] == "SIGKILL"


def test_it_stops_a_model_at_the_cpu_time_limit(write_file, make_config):
    limits = ResourceLimits(cpu_seconds=2, wall_seconds=60, memory_mb=1024)

    result = run_isolated(write_file("endless.onnx", endless_loop_onnx_bytes()), make_config(limits=limits))

    assert result.summary == "failed: benchmark: exceeded the CPU time limit of 2 s"
    assert result.isolation["signal"] == "SIGXCPU" and result.isolation["timed_out"] is False
    assert result.isolation["wall_seconds"] < 30


def test_it_reports_a_crash_with_its_signal(write_file, make_config, classifier, monkeypatch):
    monkeypatch.setattr(isolation, "CHILD_MODULE", "tests.models_app.validation.crashing_child")

    result = run_isolated(write_file("model.onnx", classifier.model()), make_config())

    assert result.outcome == Outcome.FAILED
    assert result.summary == "failed: load: crashed (signal SIGSEGV)"
    assert [step.status for step in result.steps[:3]] == [StepStatus.PASSED] * 3
    assert "Fatal Python error: Segmentation fault" in result.step("load").data["output_tail"]
    assert result.step("benchmark").status == StepStatus.NOT_EXECUTED


def test_it_keeps_child_output_out_of_the_result(write_file, make_config, classifier, monkeypatch):
    monkeypatch.setattr(isolation, "CHILD_MODULE", "tests.models_app.validation.noisy_child")

    result = run_isolated(write_file("model.onnx", classifier.model()), make_config())

    assert result.outcome == Outcome.PASSED, result.summary


def test_it_reports_an_error_when_the_child_cannot_start_validating(write_file, make_config, monkeypatch):
    monkeypatch.setattr(isolation, "CHILD_MODULE", "models_app.validation.no_such_module")

    result = run_isolated(write_file("model.onnx", b"whatever"), make_config())

    assert result.outcome == Outcome.ERROR
    assert result.summary.startswith("error: the validation process failed (exit code 1)")
    assert "No module named" in result.summary
    assert {step.status for step in result.steps} == {StepStatus.NOT_EXECUTED}


def test_it_checks_only_integrity_and_format_of_a_tflite_model(write_file, make_config):
    content = tflite_bytes()
    config = make_config(content, framework="tflite", detected_format="tflite")

    result = run_isolated(write_file("model.tflite", content), config)

    assert result.outcome == Outcome.NOT_EXECUTED
    assert result.summary.startswith("not executed: tflite models cannot run here")
    assert [step.status for step in result.steps] == [StepStatus.PASSED] * 2 + [StepStatus.NOT_EXECUTED] * 6


@pytest.mark.parametrize("setting", ["cpu_seconds", "wall_seconds"])
def test_it_refuses_nonsensical_limits(setting):
    with pytest.raises(ValueError, match="must be positive"):
        ResourceLimits(**{setting: 0})


def test_it_never_imports_onnxruntime_in_the_parent(write_file, classifier):
    path = write_file("model.onnx", classifier.model())
    script = (
        "import sys\n"
        "from models_app.validation import ValidationConfig, run_isolated\n"
        f"result = run_isolated({path!r}, ValidationConfig(warmup_runs=1, benchmark_runs=5))\n"
        "assert result.outcome == 'passed', result.summary\n"
        "print(sorted({'onnxruntime', 'onnx', 'numpy', 'django'} & set(sys.modules)))\n"
    )

    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("returncode", "timed_out", "cpu_seconds", "tail", "reason"),
    [
        (-9, True, 1.0, "", "timed out after 60 s"),
        (-24, False, 60.0, "", "exceeded the CPU time limit of 60 s"),
        (-9, False, 65.0, "", "exceeded the CPU time limit of 60 s"),
        (-6, False, 1.0, "terminate called after throwing an instance of 'std::bad_alloc'",
         "exceeded the memory limit of 1024 MB (crashed with SIGABRT)"),
        (1, False, 1.0, "Traceback ...\nMemoryError", "exceeded the memory limit of 1024 MB"),
        (-9, False, 1.0, "", "was killed (signal SIGKILL), most likely by the kernel's out-of-memory killer"),
        (-11, False, 1.0, "", "crashed (signal SIGSEGV)"),
        (-7, False, 1.0, "", "crashed (signal SIGBUS)"),
        (2, False, 1.0, "usage: ...\nbad arguments", "the validation process failed (exit code 2): bad arguments"),
        (0, False, 1.0, "", "the validation process exited without a result"),
    ],
)
def test_it_explains_how_the_child_ended(returncode, timed_out, cpu_seconds, tail, reason):
    child = isolation.ChildExit(returncode, timed_out, cpu_seconds, wall_seconds=1.0)

    assert isolation.exit_reason(child, TEST_LIMITS, tail) == reason


def test_it_sets_the_limits_in_the_child_before_anything_loads():
    script = (
        "import resource, sys\n"
        "from models_app.validation.child import apply_limits\n"
        "apply_limits({'memory_mb': 512, 'cpu_seconds': 7.5})\n"
        "print(resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_CPU),\n"
        "      resource.getrlimit(resource.RLIMIT_CORE), sorted({'numpy', 'onnx', 'onnxruntime'} & set(sys.modules)))\n"
    )

    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(536870912,", "536870912)", "(8,", "13)", "(0,", "0)", "[]"]


def test_it_writes_the_childs_result_where_the_parent_reads_it(write_file, make_config, classifier, tmp_path,
                                                                 monkeypatch):
    applied = []
    monkeypatch.setattr(child, "apply_limits", applied.append)  # not on the test process itself
    config = make_config(benchmark_runs=3)
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(config.to_dict())))
    result_path = tmp_path / "result.json"

    assert child.main([write_file("model.onnx", classifier.model()), str(result_path), str(tmp_path)]) == 0

    payload = json.loads(result_path.read_text())
    assert applied == [config.to_dict()["limits"]]
    assert payload["final"] is True and payload["result"]["outcome"] == "passed"
    assert payload["peak_rss_mb"] > 0
    assert not (tmp_path / "result.json.tmp").exists()
