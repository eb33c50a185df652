"""What a validation run is asked to do: the model's declared facts, benchmark settings, gates and limits."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

RUNNABLE_FRAMEWORKS = ("onnx",)
FRAMEWORKS = ("onnx", "tensorflow", "tflite", "pytorch", "coreml")
ACCURACY_METRICS = ("top1", "top5")

# MISSION.md's defaults. A max_* gate passes when measured <= threshold, a min_* gate when measured >= threshold;
# None switches a gate off.
DEFAULT_GATES: dict[str, float | None] = {
    "max_latency_p99_ms": 100.0,
    "min_throughput_ips": 10.0,
    "max_memory_mb": 2048.0,
    "min_accuracy": 0.90,
    "max_error_rate": 0.01,
    "max_latency_increase": 0.20,
    "max_accuracy_drop": 0.10,
    "min_output_match": 0.90,
    "min_baseline_agreement": None,
}

# Measured (onnxruntime 1.32, Python 3.11): the child validating a small model peaks at ~185 MB of address
# space with one intra-op thread and still passes under 384 MB with four (MALLOC_ARENA_MAX=2 caps glibc's
# 64 MB per-thread arenas). Below this floor Python and onnxruntime themselves would not fit.
MIN_MEMORY_MB = 384


@dataclass(frozen=True)
class ResourceLimits:
    """Ceilings for the child process: CPU seconds and address space set in the child, wall time by the parent."""

    cpu_seconds: float = 300.0
    wall_seconds: float = 600.0
    # RLIMIT_AS, i.e. address space, not RSS. A model of S bytes needs about 200 MB + 3 S (onnx.load, the
    # checker and the session each hold a copy for a moment; a 100 MB model passes at 512 MB), so 4096 MB
    # validates models up to ~1.3 GB, while a graph that allocates without bound fails within milliseconds
    # instead of pushing the worker's host into the OOM killer.
    memory_mb: int = 4096

    def __post_init__(self) -> None:
        if not (self.cpu_seconds > 0 and self.wall_seconds > 0):
            raise ValueError("cpu_seconds and wall_seconds must be positive")
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(f"memory_mb must be at least {MIN_MEMORY_MB} (what onnxruntime itself needs)")


@dataclass
class ValidationConfig:
    """Everything the pipeline needs besides the model file; JSON round-trips through to_dict/from_dict."""

    framework: str = "onnx"
    detected_format: str = "onnx"
    expected_sha256: str | None = None
    expected_size: int | None = None
    declared_inputs: list[dict[str, Any]] = field(default_factory=list)
    declared_outputs: list[dict[str, Any]] = field(default_factory=list)
    # Declared input profiles (profiles.py), a profile's "samples" resolved to a local .npz as "samples_path";
    # none: one profile of guessed shapes (or the test set's inputs when one is given).
    profiles: list[dict[str, Any]] = field(default_factory=list)
    warmup_runs: int = 10
    benchmark_runs: int = 100
    test_set_path: str | None = None
    accuracy_metric: str = "top1"
    gates: dict[str, float | None] = field(default_factory=dict)
    # The previous version's model file, measured side by side with this one in the same child.
    baseline_path: str | None = None
    baseline_model_id: str | None = None
    # Per output name (or "*"): {"max_abs", "max_rel", "min_cosine"} for expected outputs and baseline agreement.
    output_tolerances: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    intra_op_threads: int = 1
    # formats.py's DetectedFormat.details, recorded as-is for frameworks that cannot run here.
    format_details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):
            self.limits = ResourceLimits(**self.limits)
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {self.framework!r}; expected one of {', '.join(FRAMEWORKS)}")
        unknown = set(self.gates) - set(DEFAULT_GATES)
        if unknown:
            raise ValueError(f"unknown gate(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_GATES)}")
        for name, value in self.gates.items():
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"gate {name} needs a finite number or None, not {value!r}")
        # Overrides are partial: a model or device class changes one threshold and keeps the other defaults.
        self.gates = {**DEFAULT_GATES, **self.gates}
        if self.accuracy_metric not in ACCURACY_METRICS:
            raise ValueError(f"unknown accuracy metric {self.accuracy_metric!r}; known: {', '.join(ACCURACY_METRICS)}")
        if self.benchmark_runs < 1 or self.warmup_runs < 0 or self.intra_op_threads < 1:
            raise ValueError("benchmark_runs and intra_op_threads must be >= 1, warmup_runs >= 0")

    @property
    def runnable(self) -> bool:
        return self.framework in RUNNABLE_FRAMEWORKS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationConfig:
        return cls(**data)
