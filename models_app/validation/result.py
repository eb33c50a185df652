"""The validation report: steps, metrics, baseline deltas, gates and environment, JSON-serialisable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """Overall verdict of a validation run."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_EXECUTED = "not_executed"
    # Structure, load and inference checked, but at guessed shapes: latency figures decide nothing.
    NEEDS_APPROVAL = "needs_approval"
    ERROR = "error"  # the validation machinery itself broke, not the model


class StepStatus(StrEnum):
    """What happened to one step."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not applicable: no test set, no baseline
    NOT_EXECUTED = "not_executed"  # could not run: the framework cannot run here, or an earlier step failed


STEP_NAMES = ("integrity", "format", "signature", "load", "benchmark", "accuracy", "baseline", "gates")

METRIC_KEYS = (
    "load_ms", "memory_mb", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms",
    "throughput_ips", "inferences", "failed_inferences", "error_rate", "accuracy", "accuracy_samples",
    "output_match", "output_match_samples",
)  # fmt: skip


def empty_metrics() -> dict[str, Any]:
    return dict.fromkeys(METRIC_KEYS)


def empty_deltas() -> dict[str, float | None]:
    return {"latency_increase": None, "latency_p99_increase": None, "latency_p_value": None, "accuracy_drop": None,
            "output_agreement": None}


@dataclass
class StepResult:
    """One step's outcome with its duration, a human-readable detail and structured data."""

    name: str
    status: str = StepStatus.PASSED
    duration_ms: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def fail(self, detail: str, **data: Any) -> None:
        self.status, self.detail = StepStatus.FAILED, detail
        self.data.update(data)


@dataclass
class GateResult:
    """One quality gate: its threshold, the measured value and whether it passed (None: not applicable)."""

    name: str
    threshold: float | None
    measured: float | None
    passed: bool | None
    detail: str


@dataclass
class PipelineResult:
    """The whole report of one validation run."""

    outcome: str
    summary: str
    steps: list[StepResult] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=empty_metrics)
    baseline_deltas: dict[str, float | None] = field(default_factory=empty_deltas)
    gates: list[GateResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    # Per input profile: its inputs (shape, dtype, source), what was guessed, its figures and its gates.
    profiles: list[dict[str, Any]] = field(default_factory=list)
    # How the child process ended: exit code or signal, CPU seconds, peak RSS, wall seconds.
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == Outcome.PASSED

    def step(self, name: str) -> StepResult:
        return next(step for step in self.steps if step.name == name)

    def gate(self, name: str) -> GateResult:
        return next(gate for gate in self.gates if gate.name == name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # StrEnum members are str already; plain str keeps the dict equal to its JSON round trip.
        data["outcome"] = str(self.outcome)
        for step in data["steps"]:
            step["status"] = str(step["status"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineResult:
        return cls(
            outcome=data["outcome"],
            summary=data["summary"],
            steps=[StepResult(**step) for step in data.get("steps", [])],
            metrics={**empty_metrics(), **data.get("metrics", {})},
            baseline_deltas={**empty_deltas(), **data.get("baseline_deltas", {})},
            gates=[GateResult(**gate) for gate in data.get("gates", [])],
            environment=data.get("environment", {}),
            profiles=data.get("profiles", []),
            isolation=data.get("isolation", {}),
        )
