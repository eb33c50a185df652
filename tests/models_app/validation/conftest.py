"""Fixtures for the validation pipeline: model files on disk and configs with small benchmark runs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models_app.validation import ResourceLimits, ValidationConfig
from tests.artifacts import classifier_onnx_bytes, npz_bytes

# Wide enough for Python + onnxruntime on a loaded CI machine, tight enough that the tests stay quick.
TEST_LIMITS = ResourceLimits(cpu_seconds=60, wall_seconds=60, memory_mb=1024)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes], str]:
    def write(name: str, content: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(content)
        return str(path)

    return write


@pytest.fixture
def make_config() -> Callable[..., ValidationConfig]:
    def make(content: bytes | None = None, **fields: Any) -> ValidationConfig:
        if content is not None:
            fields.setdefault("expected_sha256", hashlib.sha256(content).hexdigest())
            fields.setdefault("expected_size", len(content))
        fields.setdefault("warmup_runs", 2)
        fields.setdefault("benchmark_runs", 20)
        fields.setdefault("limits", TEST_LIMITS)
        return ValidationConfig(**fields)

    return make


class Classifier:
    """A 4-feature, 3-class softmax classifier and a labelled test set, with its accuracy computed in numpy."""

    def __init__(self, samples: int = 200, wrong: int = 14):
        rng = np.random.default_rng(42)
        self.weights = rng.standard_normal((4, 3)).astype(np.float32)
        self.bias = np.array([0.1, -0.2, 0.05], np.float32)
        inputs = rng.standard_normal((samples * 2, 4)).astype(np.float32)
        logits = inputs.astype(np.float64) @ self.weights + self.bias
        ordered = np.sort(logits, axis=1)
        # Clear winners only, so float32 rounding in onnxruntime cannot flip an argmax.
        clear = ordered[:, -1] - ordered[:, -2] > 1e-2
        self.inputs = inputs[clear][:samples]
        predicted = (self.inputs.astype(np.float64) @ self.weights + self.bias).argmax(axis=1)
        self.labels = predicted.copy()
        # Some labels deliberately wrong, so the expected accuracy is not a trivial 100 %.
        self.labels[:wrong] = (self.labels[:wrong] + 1) % 3
        self.expected_accuracy = float(np.mean(predicted == self.labels))

    def model(self) -> bytes:
        return classifier_onnx_bytes(self.weights, self.bias)

    def test_set(self, **overrides: np.ndarray) -> bytes:
        arrays = {"inputs": self.inputs, "labels": self.labels, **overrides}
        return npz_bytes(**arrays)


@pytest.fixture
def classifier() -> Classifier:
    return Classifier()
