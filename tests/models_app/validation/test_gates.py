"""Quality gates, baseline deltas and the configuration that sets them."""

from __future__ import annotations

import numpy as np
import pytest

from models_app.validation import ACCURACY_METRICS, DEFAULT_GATES, ValidationConfig
from models_app.validation.gates import GATES, evaluate, side_by_side


def by_name(results):
    return {result.name: result for result in results}


def test_it_passes_and_fails_each_kind_of_gate_with_the_numbers_spelled_out():
    metrics = {"latency_p99_ms": 153.2, "throughput_ips": 5.0, "memory_mb": 100.0, "accuracy": 0.95,
               "error_rate": 0.0}
    deltas = {"latency_increase": 0.5, "latency_p_value": 0.001, "accuracy_drop": 0.02}

    gates = by_name(evaluate(DEFAULT_GATES, metrics, deltas))

    assert gates["max_latency_p99_ms"].passed is False
    assert gates["max_latency_p99_ms"].detail == "p99 latency 153 ms exceeds the maximum of 100 ms by 53.20 ms (+53%)"
    assert gates["min_throughput_ips"].detail == \
        "throughput 5 inferences/s is below the minimum of 10 inferences/s by 5 inferences/s (-50%)"
    assert gates["max_memory_mb"].passed is True
    assert gates["max_memory_mb"].detail == "memory footprint 100 MB is within the maximum of 2048 MB"
    assert gates["min_accuracy"].detail == "accuracy 95% meets the minimum of 90%"
    assert gates["max_error_rate"].passed is True
    assert gates["max_latency_increase"].detail == \
        "median latency increase against the baseline (measured side by side) 50% exceeds the maximum of 20% " \
        "(p = 0.001) by 30%"
    assert gates["max_accuracy_drop"].detail == "accuracy drop against the baseline 2 pp is within the maximum of 10 pp"
    assert (gates["max_latency_p99_ms"].threshold, gates["max_latency_p99_ms"].measured) == (100.0, 153.2)


def test_it_treats_thresholds_as_inclusive():
    metrics = {"latency_p99_ms": 100.0, "throughput_ips": 10.0, "accuracy": 0.9, "error_rate": 0.01}

    gates = by_name(evaluate(DEFAULT_GATES, metrics, {}))

    assert all(gates[name].passed for name in ("max_latency_p99_ms", "min_throughput_ips", "min_accuracy",
                                               "max_error_rate"))


def test_it_records_gates_without_a_measurement_as_not_applicable():
    gates = evaluate({**DEFAULT_GATES, "max_memory_mb": None}, {"memory_mb": 5000.0}, {})

    assert {gate.passed for gate in gates} == {None}
    assert by_name(gates)["max_memory_mb"].detail == "not applicable: the gate is switched off"
    assert by_name(gates)["min_accuracy"].detail == "not applicable: no labelled test set was given"
    assert by_name(gates)["max_latency_p99_ms"].measured is None


def test_a_latency_increase_fails_its_gate_only_when_it_is_significant():
    noisy = evaluate(DEFAULT_GATES, {}, {"latency_increase": 0.5, "latency_p_value": 0.3})
    significant = evaluate(DEFAULT_GATES, {}, {"latency_increase": 0.5, "latency_p_value": 0.0001})

    assert by_name(noisy)["max_latency_increase"].passed is True
    assert "not significantly (p = 0.3 >= 0.01)" in by_name(noisy)["max_latency_increase"].detail
    assert by_name(significant)["max_latency_increase"].passed is False


def test_it_compares_two_interleaved_latency_samples():
    rng = np.random.default_rng(0)
    same = rng.gamma(20, 0.05, 200).tolist()
    twice = (rng.gamma(20, 0.05, 200) * 2).tolist()

    slower = side_by_side(twice, same)
    equal = side_by_side(same[:100], same[100:])

    assert slower["latency_increase"] == pytest.approx(1.0, abs=0.1) and slower["latency_p_value"] < 1e-6
    assert abs(equal["latency_increase"]) < 0.1 and equal["latency_p_value"] > 0.01
    assert side_by_side([1.0], same)["latency_increase"] is None


def test_shape_dependent_gates_decide_nothing_at_guessed_shapes():
    gates = by_name(evaluate(DEFAULT_GATES, {"latency_p99_ms": 500.0, "throughput_ips": 2.0, "memory_mb": 5000.0},
                             {}, shapes_guessed=True))

    assert gates["max_latency_p99_ms"].passed is None and gates["min_throughput_ips"].passed is None
    assert gates["max_latency_p99_ms"].detail.startswith("not decisive: shapes guessed (p99 latency 500 ms")
    assert gates["max_memory_mb"].passed is False  # not a matter of shapes


def test_it_merges_gate_overrides_with_the_defaults():
    config = ValidationConfig(gates={"max_latency_p99_ms": 30, "min_accuracy": None})

    assert config.gates == {**DEFAULT_GATES, "max_latency_p99_ms": 30, "min_accuracy": None}
    assert ValidationConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gates": {"max_latency_ms": 10}}, "unknown gate"),
        ({"gates": {"min_accuracy": "high"}}, "finite number"),
        ({"framework": "caffe"}, "unknown framework"),
        ({"accuracy_metric": "f1"}, "unknown accuracy metric"),
        ({"benchmark_runs": 0}, "benchmark_runs"),
        ({"limits": {"memory_mb": 100}}, "memory_mb must be at least"),
    ],
)
def test_it_refuses_a_bad_configuration(fields, message):
    with pytest.raises(ValueError, match=message):
        ValidationConfig(**fields)


def test_it_knows_the_same_gates_and_metrics_everywhere():
    from models_app.validation.accuracy import METRICS

    assert [gate.name for gate in GATES] == list(DEFAULT_GATES)
    assert set(METRICS) == set(ACCURACY_METRICS)
