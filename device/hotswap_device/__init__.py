"""The reference device agent: enroll, check in, verify, download, hot-swap ONNX models slot by slot, serve the
applications' inferences (Agent.infer / Agent.feedback, or the local HTTP API) and report (no Django)."""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "CycleResult", "EnrollmentFailed", "Inference", "NoActiveModel", "SlotOutcome", "UnknownInference"]


def __getattr__(name: str) -> Any:
    # Lazy, so the fleet simulator (which shares this package) does not load onnxruntime and numpy.
    if name in __all__:
        from hotswap_device import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'hotswap_device' has no attribute {name!r}")
