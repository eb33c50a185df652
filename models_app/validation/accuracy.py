"""Step 6: checks against a test set: top-k accuracy on labels, and expected outputs within a tolerance.

The test set is an .npz of sample inputs (feeds.SampleSet) with `labels` and/or `expected.<output name>` arrays.
The same comparison within tolerance gives the agreement of two versions' outputs on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from models_app.validation.feeds import SampleError, SampleSet

# Within tolerance: |got - expected| <= max_abs + max_rel * |expected| everywhere, and cosine >= min_cosine if set.
DEFAULT_TOLERANCE = {"max_abs": 1e-4, "max_rel": 1e-3, "min_cosine": None}


class TestSetError(ValueError):
    """The test set does not fit the model; the message says how."""

    __test__ = False  # not a pytest test class, despite the name


def _topk(k: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def correct(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if k == 1:
            return scores.argmax(axis=1) == labels
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return (top == labels[:, None]).any(axis=1)

    return correct


# Per-sample correctness from (scores [n, classes], integer labels [n]); config.ACCURACY_METRICS names these.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"top1": _topk(1), "top5": _topk(5)}


def _labels(raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] > 1:
        return raw.argmax(axis=1)  # one-hot rows
    labels = raw.reshape(-1)
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    raise TestSetError(f"labels must be integer class indices (or one-hot rows), not {raw.dtype}")


def load(path: str, session: ort.InferenceSession) -> SampleSet:
    try:
        return SampleSet(path, session)
    except SampleError as exc:
        raise TestSetError(str(exc)) from exc


def tolerance_for(tolerances: dict[str, dict[str, Any]], output: str) -> dict[str, Any]:
    return {**DEFAULT_TOLERANCE, **tolerances.get("*", {}), **tolerances.get(output, {})}


def within(got: np.ndarray, expected: np.ndarray, tolerance: dict[str, Any]) -> bool:
    """One sample's output against its expected value (same number of elements), within the tolerance."""
    got, expected = np.asarray(got, np.float64).reshape(-1), np.asarray(expected, np.float64).reshape(-1)
    if got.size != expected.size:
        return False
    if tolerance.get("min_cosine") is not None:
        norms = np.linalg.norm(got) * np.linalg.norm(expected)
        cosine = float(got @ expected / norms) if norms else float(np.array_equal(got, expected))
        if cosine < tolerance["min_cosine"]:
            return False
    if tolerance.get("max_abs") is None and tolerance.get("max_rel") is None:
        return True
    limit = (tolerance.get("max_abs") or 0.0) + (tolerance.get("max_rel") or 0.0) * np.abs(expected)
    return bool(np.all(np.abs(got - expected) <= limit))


def _rows(array: np.ndarray, rows: int) -> list[np.ndarray]:
    """A batch's output split per sample (a single sample's output as it is)."""
    return [array] if rows == 1 else list(np.asarray(array).reshape(rows, -1))


def evaluate(session: ort.InferenceSession, samples: SampleSet, metric: str,
             tolerances: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Accuracy on the labels and the share of samples whose outputs are all within tolerance of the expected."""
    names = [node.name for node in session.get_outputs()]
    labels = _labels(samples.labels) if samples.labels is not None else None
    correct = matched = 0
    for feed, start, rows in samples.batches(session):
        outputs = dict(zip(names, session.run(None, feed), strict=True))
        if labels is not None:
            scores = np.asarray(outputs[names[0]])
            if scores.size % rows:
                raise TestSetError(f"output {names[0]!r} has shape {scores.shape} for a batch of {rows} samples")
            correct += int(METRICS[metric](scores.reshape(rows, -1), labels[start : start + rows]).sum())
        if samples.expected:
            per_output = [(_rows(outputs[name], rows), expected[start : start + rows], tolerance_for(tolerances, name))
                          for name, expected in samples.expected.items()]
            matched += sum(all(within(got[i], want[i], tol) for got, want, tol in per_output) for i in range(rows))
    found: dict[str, Any] = {"samples": len(samples), "metric": metric, "output": names[0]}
    if labels is not None:
        found.update(accuracy=correct / len(samples), correct=correct)
    if samples.expected:
        found.update(output_match=matched / len(samples), matched=matched, checked_outputs=sorted(samples.expected),
                     tolerances={name: tolerance_for(tolerances, name) for name in samples.expected})
    return found


def agreement(first: ort.InferenceSession, second: ort.InferenceSession, feeds: list[dict[str, np.ndarray]],
              tolerances: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How often two sessions' outputs agree within tolerance on the same inputs (outputs they share by name)."""
    shared = [node.name for node in first.get_outputs() if node.name in {n.name for n in second.get_outputs()}]
    if not shared:
        return {"agreement": None, "samples": 0, "outputs": []}
    agreed = 0
    for feed in feeds:
        ours, theirs = first.run(shared, feed), second.run(shared, feed)
        agreed += all(within(a, b, tolerance_for(tolerances, name)) for name, a, b in zip(shared, ours, theirs,
                                                                                            strict=True))
    return {"agreement": agreed / len(feeds), "samples": len(feeds), "outputs": shared}
