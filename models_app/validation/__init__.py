"""Model validation pipeline: integrity, structure, signature, load, benchmark, accuracy, baseline, gates."""

# Only stdlib-backed modules here: importing the package (as the Celery worker does) must not pull in
# numpy, onnx or onnxruntime. The steps themselves live in pipeline.py and run in the child process.
from models_app.validation.config import (
    ACCURACY_METRICS,
    DEFAULT_GATES,
    FRAMEWORKS,
    RUNNABLE_FRAMEWORKS,
    ResourceLimits,
    ValidationConfig,
)
from models_app.validation.isolation import run_isolated
from models_app.validation.result import (
    METRIC_KEYS,
    STEP_NAMES,
    GateResult,
    Outcome,
    PipelineResult,
    StepResult,
    StepStatus,
)

__all__ = [
    "ACCURACY_METRICS",
    "DEFAULT_GATES",
    "FRAMEWORKS",
    "METRIC_KEYS",
    "RUNNABLE_FRAMEWORKS",
    "STEP_NAMES",
    "GateResult",
    "Outcome",
    "PipelineResult",
    "ResourceLimits",
    "StepResult",
    "StepStatus",
    "ValidationConfig",
    "run_isolated",
]
