"""onnxruntime sessions: load and warm up, swap the active one atomically, and the inference threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from hotswap_device import tracing

logger = logging.getLogger(__name__)

# infer(session, inputs) runs one inference; the default is session.run(None, inputs).
InferCallback = Callable[[ort.InferenceSession, dict[str, Any]], object]
# recorder(model, version, latency_ms, ok) receives every timed call.
Recorder = Callable[[str, str, float, bool], None]

_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.str_,
}


class NoActiveModel(RuntimeError):
    """Nothing is loaded yet, so there is nothing to run."""


class ModelLoadError(RuntimeError):
    """onnxruntime could not load or run the model."""


# eq=False: models compare by identity (comparing sessions and numpy inputs field by field is meaningless).
@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A warmed-up session with the inputs generated for it; immutable, so a reference to it is a snapshot."""

    name: str
    version: str
    sha256: str
    path: Path
    session: ort.InferenceSession
    inputs: dict[str, Any]


def _default_infer(session: ort.InferenceSession, inputs: dict[str, Any]) -> object:
    return session.run(None, inputs)


def generated_inputs(session: ort.InferenceSession, *, seed: int = 0) -> dict[str, Any]:
    """Inputs that respect the session's signature: symbolic or unknown dims become 1, dtypes as declared."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for arg in session.get_inputs():
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in (arg.shape or [])]
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise ModelLoadError(f"input {arg.name!r} has type {arg.type}, which generated inputs cannot fill")
        if dtype is np.str_:
            feeds[arg.name] = np.full(shape, "", dtype=object)
        elif dtype is np.bool_:
            feeds[arg.name] = np.zeros(shape, dtype=np.bool_)
        elif np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            # Small non-negative integers: plausible token ids or indices for most integer inputs.
            feeds[arg.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def load_model(
    path: Path,
    *,
    name: str,
    version: str,
    sha256: str,
    warmup_runs: int = 3,
    infer: InferCallback | None = None,
    session_threads: int | None = 1,
) -> LoadedModel:
    """Loads the model on the CPU and runs it a few times, so the first real call does not pay for the set-up."""
    options = ort.SessionOptions()
    if session_threads:
        # The agent parallelises with its own inference threads; one intra-op thread per call avoids
        # oversubscribing a small device's cores (and the thread pool's busy spinning).
        options.intra_op_num_threads = session_threads
        options.inter_op_num_threads = 1
    with tracing.span("model.load", attributes={"model.version": version, "warmup.runs": warmup_runs}):
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            inputs = generated_inputs(session)
            run = infer or _default_infer
            for _ in range(warmup_runs):
                run(session, inputs)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime could not load or run {path.name}: {exc}") from exc
    return LoadedModel(name=name, version=version, sha256=sha256, path=path, session=session, inputs=inputs)


class ModelRuntime:
    """Holds the active model; swaps it while inference threads keep calling.

    A call reads `_active` once and keeps that reference until it returns, so a swap never
    changes the session under a running call, and the old session lives on until its last call
    completes. Our own reference to it is dropped after the grace period.
    """

    def __init__(
        self,
        *,
        grace_seconds: float = 5.0,
        infer: InferCallback | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.grace_seconds = grace_seconds
        self._infer = infer or _default_infer
        self._recorder = recorder
        self._active: LoadedModel | None = None
        # Serialises swaps (writers); readers need no lock because rebinding an attribute is atomic.
        self._swap_lock = threading.Lock()
        self._retired: list[LoadedModel] = []
        self._timers: list[threading.Timer] = []
        self._errors_logged = 0

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    @property
    def retired(self) -> list[LoadedModel]:
        """Models swapped out but still inside their grace period."""
        with self._swap_lock:
            return list(self._retired)

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Makes `model` the active one; returns the model it replaced (released after the grace period)."""
        with self._swap_lock:
            old, self._active = self._active, model
            if old is not None and old is not model:
                self._retired.append(old)
                timer = threading.Timer(self.grace_seconds, self._release, args=(old,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
        return old

    def _release(self, model: LoadedModel) -> None:
        with self._swap_lock:
            if model in self._retired:
                self._retired.remove(model)
            self._timers = [t for t in self._timers if t.is_alive() and t is not threading.current_thread()]
        logger.info("released session of %s %s", model.name, model.version)

    def infer(self) -> bool:
        """One timed inference on the active model; True when it succeeded. Raises NoActiveModel."""
        model = self._active  # the one read of the shared reference for this call
        if model is None:
            raise NoActiveModel("no model is active")
        started = time.perf_counter()
        ok = True
        try:
            self._infer(model.session, model.inputs)
        except Exception:
            ok = False
            # A broken model fails every call; logging each one would flood the device's log.
            if self._errors_logged < 5:
                self._errors_logged += 1
                logger.exception("inference failed on %s %s", model.name, model.version)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if self._recorder is not None:
            self._recorder(model.name, model.version, latency_ms, ok)
        return ok

    def close(self) -> None:
        with self._swap_lock:
            for timer in self._timers:
                timer.cancel()
            self._timers, self._retired, self._active = [], [], None


class InferenceWorkers:
    """N threads calling the runtime continuously (with an optional pause between calls)."""

    def __init__(self, runtime: ModelRuntime, *, threads: int, interval_seconds: float = 0.0) -> None:
        self.runtime = runtime
        self.threads = threads
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        for index in range(self.threads):
            thread = threading.Thread(target=self._loop, name=f"inference-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.runtime.infer()
            except NoActiveModel:
                self._stop.wait(0.2)
                continue
            if self.interval_seconds:
                self._stop.wait(self.interval_seconds)
