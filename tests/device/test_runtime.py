"""The runtime: generated inputs, warm-up, and atomic swaps while inference threads keep calling."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hotswap_device.metrics import MetricsRecorder
from hotswap_device.runtime import (
    InferenceWorkers,
    ModelLoadError,
    ModelRuntime,
    NoActiveModel,
    generated_inputs,
    load_model,
)
from tests.artifacts import onnx_model_bytes


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_it_keeps_serving_with_zero_failed_or_dropped_calls_while_swapping_under_load(tmp_path):
    paths = {"1.0.0": _write(tmp_path, "a.onnx", onnx_model_bytes(hidden=8)),
             "2.0.0": _write(tmp_path, "b.onnx", onnx_model_bytes(hidden=16))}
    recorder = MetricsRecorder(window_seconds=3600)
    runtime = ModelRuntime(grace_seconds=0.05, recorder=recorder.record)

    def load(version: str):
        return load_model(paths[version], name="m", version=version, sha256="0" * 64, warmup_runs=2)

    runtime.swap(load("1.0.0"))
    stop = threading.Event()
    started, completed, failed = [0] * 4, [0] * 4, [0] * 4
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        while not stop.is_set():
            started[index] += 1
            try:
                ok = runtime.infer()
            except BaseException as exc:  # anything escaping a call counts as a failure
                errors.append(exc)
                failed[index] += 1
                continue
            if ok:
                completed[index] += 1
            else:
                failed[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    swaps = 0
    try:
        for round_ in range(24):
            # A freshly loaded session each time: old ones are released (after the grace) during the run.
            runtime.swap(load("2.0.0" if round_ % 2 == 0 else "1.0.0"))
            swaps += 1
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    assert swaps >= 20
    assert errors == [] and sum(failed) == 0
    assert sum(started) == sum(completed) > 100  # nothing started was lost
    windows = {w["version"]: w for w in recorder.flush()}
    assert set(windows) == {"1.0.0", "2.0.0"}  # both versions served calls
    assert sum(w["inference_count"] for w in windows.values()) == sum(completed)
    assert all(w["error_count"] == 0 for w in windows.values())
    time.sleep(0.3)
    assert runtime.retired == []  # every swapped-out session was released after its grace period
    runtime.close()


def test_it_lets_in_flight_calls_finish_on_the_old_session_after_its_release(tmp_path):
    path = _write(tmp_path, "a.onnx", onnx_model_bytes())
    entered, release = threading.Event(), threading.Event()
    served: list[str] = []

    def slow_infer(session, inputs):
        if not entered.is_set():
            entered.set()
            release.wait(5)
        return session.run(None, inputs)

    runtime = ModelRuntime(grace_seconds=0.01, infer=slow_infer,
                           recorder=lambda model, version, ms, ok: served.append(f"{version}:{ok}"))
    old = load_model(path, name="m", version="1.0.0", sha256="0" * 64, warmup_runs=0)
    runtime.swap(old)
    call = threading.Thread(target=runtime.infer)
    call.start()
    assert entered.wait(5)
    entered_new = load_model(path, name="m", version="1.1.0", sha256="1" * 64, warmup_runs=0)
    assert runtime.swap(entered_new) is old
    time.sleep(0.1)  # the grace period is over: the runtime let go of the old session
    assert runtime.retired == []
    release.set()
    call.join(5)

    assert served == ["1.0.0:True"]
    assert runtime.infer() is True
    assert served[-1] == "1.1.0:True"
    runtime.close()


def test_it_generates_inputs_from_the_session_signature(tmp_path):
    content = onnx_model_bytes(inputs=[("image", [1, 3, 4, 4]), ("extra", [1, 5])], batch_symbolic=True,
                               outputs=[("scores", [1, 2, 3])])
    model = load_model(_write(tmp_path, "m.onnx", content), name="m", version="1.0.0", sha256="0" * 64)

    inputs = generated_inputs(model.session)

    assert {k: (v.shape, v.dtype) for k, v in inputs.items()} == {
        "image": ((1, 3, 4, 4), np.float32), "extra": ((1, 5), np.float32)}
    assert model.session.run(None, inputs)[0].shape == (1, 2, 3)


def test_it_refuses_a_file_onnxruntime_cannot_load(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load or run"):
        load_model(_write(tmp_path, "bad.onnx", b"not a model"), name="m", version="1.0.0", sha256="0" * 64)


def test_it_fails_the_load_when_the_warm_up_callback_fails(tmp_path):
    def broken(session, inputs):
        raise RuntimeError("bad input")

    with pytest.raises(ModelLoadError, match="bad input"):
        load_model(_write(tmp_path, "m.onnx", onnx_model_bytes()), name="m", version="1.0.0", sha256="0" * 64,
                   infer=broken)


def test_it_counts_failed_calls_and_runs_a_user_callback(tmp_path):
    calls = Counter()

    def flaky(session, inputs):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise ValueError("every other call fails")
        return session.run(None, inputs)

    recorder = MetricsRecorder()
    runtime = ModelRuntime(infer=flaky, recorder=recorder.record)
    with pytest.raises(NoActiveModel):
        runtime.infer()
    runtime.swap(load_model(_write(tmp_path, "m.onnx", onnx_model_bytes()), name="m", version="1.0.0",
                            sha256="0" * 64, warmup_runs=0, infer=flaky))

    results = [runtime.infer() for _ in range(4)]

    assert results == [True, False, True, False]
    [window] = recorder.flush()
    assert (window["inference_count"], window["error_count"]) == (4, 2)


def test_it_runs_inference_threads_until_stopped(tmp_path):
    recorder = MetricsRecorder()
    runtime = ModelRuntime(recorder=recorder.record)
    workers = InferenceWorkers(runtime, threads=2)
    workers.start()
    time.sleep(0.05)  # nothing active yet: the threads wait instead of failing
    runtime.swap(load_model(_write(tmp_path, "m.onnx", onnx_model_bytes()), name="m", version="1.0.0",
                            sha256="0" * 64, warmup_runs=0))
    time.sleep(0.5)
    workers.stop()

    [window] = recorder.flush()
    assert window["inference_count"] > 0 and window["error_count"] == 0
