"""onnxruntime sessions: load and warm up, one slot per model swapped atomically, real calls and synthetic load."""

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


class InvalidInputs(ValueError):
    """The inputs of a call do not fit the model's signature (names, dtypes, ranks); the model never ran."""


class InferenceFailed(RuntimeError):
    """The model ran and onnxruntime (or the infer callback) failed; counted as an error in the window."""


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

    def unload(self) -> LoadedModel | None:
        """Stops serving: the slot has no active model; calls in flight finish on the one they hold."""
        with self._swap_lock:
            old, self._active = self._active, None
        return old

    def run(self, inputs: dict[str, Any]) -> tuple[LoadedModel, object]:
        """One timed call with the caller's inputs: (the model that served it, its outputs).

        NoActiveModel when nothing runs; InvalidInputs (not counted: the model never ran) when the inputs
        do not fit its signature; InferenceFailed (counted as an error) when the model fails on them.
        """
        model = self._active  # the one read of the shared reference for this call
        if model is None:
            raise NoActiveModel("no model is active")
        check_inputs(model, inputs)
        started = time.perf_counter()
        try:
            outputs = self._infer(model.session, inputs)
        except Exception as exc:
            self._record(model, started, ok=False)
            raise InferenceFailed(f"{model.name} {model.version} failed: {type(exc).__name__}: {exc}") from exc
        self._record(model, started, ok=True)
        return model, outputs

    def infer(self) -> bool:
        """One timed call on generated inputs (synthetic load); True when it succeeded. Raises NoActiveModel."""
        model = self._active
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
        self._record(model, started, ok=ok)
        return ok

    def _record(self, model: LoadedModel, started: float, *, ok: bool) -> None:
        if self._recorder is not None:
            self._recorder(model.name, model.version, (time.perf_counter() - started) * 1000.0, ok)

    def close(self) -> None:
        with self._swap_lock:
            for timer in self._timers:
                timer.cancel()
            self._timers, self._retired, self._active = [], [], None


def check_inputs(model: LoadedModel, inputs: dict[str, Any]) -> None:
    """InvalidInputs unless `inputs` names exactly the model's inputs, with their dtypes and ranks."""
    if not isinstance(inputs, dict):
        raise InvalidInputs("inputs must be a mapping of input name to array")
    declared = {arg.name: arg for arg in model.session.get_inputs()}
    problems = [f"unknown input {name!r}" for name in inputs if name not in declared]
    problems += [f"missing input {name!r}" for name in declared if name not in inputs]
    for name, value in inputs.items():
        arg = declared.get(name)
        if arg is None:
            continue
        dtype = _DTYPES.get(arg.type)
        array = value if isinstance(value, np.ndarray) else None
        if array is None:
            problems.append(f"input {name!r} must be a numpy array")
        elif dtype is not None and dtype is not np.str_ and array.dtype != np.dtype(dtype):
            problems.append(f"input {name!r} is {array.dtype}, the model wants {np.dtype(dtype)}")
        elif arg.shape is not None and array.ndim != len(arg.shape):
            problems.append(f"input {name!r} has {array.ndim} dimensions, the model wants {len(arg.shape)}")
    if problems:
        raise InvalidInputs(f"{model.name} {model.version}: " + "; ".join(problems))


def signature(model: LoadedModel) -> dict[str, Any]:
    """The model's inputs and outputs as the local API describes them (symbolic dimensions as null)."""
    def describe(args: Any) -> list[dict[str, Any]]:
        return [{"name": arg.name, "dtype": str(np.dtype(_DTYPES[arg.type])) if arg.type in _DTYPES else arg.type,
                 "shape": [dim if isinstance(dim, int) and dim > 0 else None for dim in (arg.shape or [])]}
                for arg in args]
    return {"inputs": describe(model.session.get_inputs()), "outputs": describe(model.session.get_outputs())}


class SlotRuntimes:
    """One ModelRuntime per model slot: each swapped, unloaded and called independently of the others."""

    def __init__(self, *, grace_seconds: float = 5.0, infer: InferCallback | None = None,
                 recorder: Recorder | None = None) -> None:
        self._options = {"grace_seconds": grace_seconds, "infer": infer, "recorder": recorder}
        self._slots: dict[str, ModelRuntime] = {}
        self._lock = threading.Lock()

    def slot(self, model: str) -> ModelRuntime:
        with self._lock:
            runtime = self._slots.get(model)
            if runtime is None:
                runtime = self._slots[model] = ModelRuntime(**self._options)  # type: ignore[arg-type]
            return runtime

    def active(self, model: str) -> LoadedModel | None:
        runtime = self._slots.get(model)
        return runtime.active if runtime is not None else None

    def actives(self) -> dict[str, LoadedModel]:
        """Every model serving now, by name."""
        with self._lock:
            runtimes = list(self._slots.items())
        return {name: runtime.active for name, runtime in runtimes if runtime.active is not None}

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        return self.slot(model.name).swap(model)

    def unload(self, model: str) -> LoadedModel | None:
        runtime = self._slots.get(model)
        return runtime.unload() if runtime is not None else None

    def run(self, model: str, inputs: dict[str, Any]) -> tuple[LoadedModel, object]:
        runtime = self._slots.get(model)
        if runtime is None:
            raise NoActiveModel(f"no model {model!r} runs on this device")
        return runtime.run(inputs)

    def close(self) -> None:
        with self._lock:
            runtimes, self._slots = list(self._slots.values()), {}
        for runtime in runtimes:
            runtime.close()


class InferenceWorkers:
    """SYNTHETIC load: N threads calling every active slot on generated random inputs (simulator, demo, tests).

    The windows they produce measure random inputs, not an application's traffic.
    """

    def __init__(self, runtime: SlotRuntimes | ModelRuntime, *, threads: int, interval_seconds: float = 0.0) -> None:
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

    def _slots(self) -> list[ModelRuntime]:
        if isinstance(self.runtime, ModelRuntime):
            return [self.runtime]
        return [self.runtime.slot(name) for name in self.runtime.actives()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            served = False
            for slot in self._slots():
                try:
                    slot.infer()
                    served = True
                except NoActiveModel:
                    continue  # unloaded since the list was taken
            if not served:
                self._stop.wait(0.2)
                continue
            if self.interval_seconds:
                self._stop.wait(self.interval_seconds)
