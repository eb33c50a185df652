"""Step 6: accuracy on a labelled .npz test set ("inputs" or one array per input name, plus "labels")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from models_app.validation.runtime import numpy_type

# Samples per inference when the model's batch dimension is dynamic: big enough to be quick, small enough
# that a large test set never needs the whole of it in one tensor.
_BATCH = 256


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


def load_test_set(path: str, session: ort.InferenceSession) -> tuple[dict[str, np.ndarray], np.ndarray]:
    inputs = session.get_inputs()
    # allow_pickle=False: a test set is data, and unpickling runs code.
    with np.load(path, allow_pickle=False) as archive:
        names = set(archive.files)
        if "labels" not in names:
            raise TestSetError(f"the test set has no 'labels' array (it has: {', '.join(sorted(names))})")
        labels = _labels(archive["labels"])
        if "inputs" in names and len(inputs) == 1:
            arrays = {inputs[0].name: archive["inputs"]}
        else:
            missing = [node.name for node in inputs if node.name not in names]
            if missing:
                raise TestSetError("the test set needs an 'inputs' array (single-input models) or one array per "
                                   f"input name; missing: {', '.join(missing)}")
            arrays = {node.name: archive[node.name] for node in inputs}
    feeds = {}
    for node in inputs:
        array = arrays[node.name]
        if array.shape[:1] != labels.shape[:1]:
            raise TestSetError(f"input {node.name!r} has {array.shape[0] if array.ndim else 0} samples but there "
                               f"are {len(labels)} labels")
        feeds[node.name] = array.astype(numpy_type(node), copy=False)
    return feeds, labels


def _batch_size(session: ort.InferenceSession, samples: int) -> int:
    first_dims = [node.shape[0] if node.shape else None for node in session.get_inputs()]
    fixed = {dim for dim in first_dims if isinstance(dim, int)}
    if not fixed:
        return _BATCH
    if len(fixed) > 1 or samples % (size := fixed.pop()) != 0:
        raise TestSetError(f"the model's batch dimension is fixed ({first_dims}) and does not divide the "
                           f"{samples} samples of the test set")
    return size


def evaluate(session: ort.InferenceSession, test_set_path: str, metric: str) -> dict[str, Any]:
    feeds, labels = load_test_set(test_set_path, session)
    samples = len(labels)
    if not samples:
        raise TestSetError("the test set is empty")
    batch = _batch_size(session, samples)
    output = session.get_outputs()[0].name
    correct = 0
    for start in range(0, samples, batch):
        chunk = {name: array[start : start + batch] for name, array in feeds.items()}
        rows = len(labels[start : start + batch])
        scores = np.asarray(session.run([output], chunk)[0])
        if scores.size % rows:
            raise TestSetError(f"output {output!r} has shape {scores.shape} for a batch of {rows} samples")
        correct += int(METRICS[metric](scores.reshape(rows, -1), labels[start : start + batch]).sum())
    return {"accuracy": correct / samples, "accuracy_samples": samples, "correct": correct, "batch_size": batch,
            "metric": metric, "output": output}
