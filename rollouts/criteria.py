"""Success criteria of a distribution: what the health judge holds the new version to."""

from __future__ import annotations

from typing import Any

from hotswap.exceptions import ApplicationError

# Defaults from MISSION.md: latency +20 %, error rate > 5 %, accuracy -10 % roll back.
DEFAULT_CRITERIA: dict[str, Any] = {
    "max_latency_p99_ms": None,
    "max_error_rate": 0.05,
    "max_latency_increase": 20.0,
    "max_accuracy_drop": 10.0,
    "min_devices": 3,
    "min_inferences": 500,
    "confidence": 0.95,
}
_BOUNDS = {
    "max_latency_p99_ms": (0, 600_000),
    "max_error_rate": (0, 1),
    "max_latency_increase": (0, 1000),
    "max_accuracy_drop": (0, 100),
    "min_devices": (1, 1_000_000),
    "min_inferences": (1, 10**12),
    "confidence": (0.5, 0.9999),
}


def criteria_normalise(raw: Any) -> dict[str, Any]:
    """The defaults, overridden by the given values; every bad value is named in details."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ApplicationError("success_criteria must be an object.", code="VALIDATION_ERROR",
                               details=[{"field": "success_criteria", "message": "Must be an object."}])
    details = [{"field": f"success_criteria.{key}", "message": f"Unknown criterion; use {', '.join(_BOUNDS)}."}
               for key in sorted(set(raw) - set(_BOUNDS))]
    criteria = dict(DEFAULT_CRITERIA)
    for key, (low, high) in _BOUNDS.items():
        if key not in raw:
            continue
        value = raw[key]
        if value is None and key == "max_latency_p99_ms":
            criteria[key] = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            details.append({"field": f"success_criteria.{key}", "message": f"A number from {low} to {high}."})
        else:
            criteria[key] = value
    if details:
        raise ApplicationError("The success criteria are invalid.", code="VALIDATION_ERROR", details=details)
    return criteria
