"""Runs the pipeline in a child process under CPU, memory and wall-clock limits, and explains how it ended."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models_app.validation import gates
from models_app.validation.config import ResourceLimits, ValidationConfig
from models_app.validation.environment import environment
from models_app.validation.errors import is_allocation_failure, memory_limit_reason
from models_app.validation.result import STEP_NAMES, Outcome, PipelineResult, StepResult, StepStatus

CHILD_MODULE = "models_app.validation.child"
_ROOT = Path(__file__).resolve().parents[2]
_TAIL_BYTES = 4096
# The child runs untrusted models: it inherits no credentials, only what Python and the libraries need.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
_CHILD_ENV = {
    # One BLAS/OpenMP thread: the pipeline's numpy work is tiny, and every extra thread reserves address space.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # glibc reserves a 64 MB arena per thread; capping them keeps RLIMIT_AS about the model, not the allocator.
    "MALLOC_ARENA_MAX": "2",
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclass(frozen=True)
class ChildExit:
    """How the child ended: exit code (negative: signal), whether the parent killed it, CPU and wall time."""

    returncode: int
    timed_out: bool
    cpu_seconds: float
    wall_seconds: float

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def _seconds(value: float) -> str:
    return f"{value:g}"


def _child_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in _ENV_KEEP if key in os.environ}
    env.update(_CHILD_ENV)
    env["PYTHONPATH"] = str(_ROOT)
    return env


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def supervise(process: subprocess.Popen[bytes], payload: bytes, wall_seconds: float) -> ChildExit:
    """Feeds the config, waits for the child and kills its whole process group at the wall-clock limit."""
    started = time.monotonic()
    lock = threading.Lock()
    state = {"exited": False, "timed_out": False}

    def on_timeout() -> None:
        with lock:
            if not state["exited"]:
                state["timed_out"] = True
                _kill_group(process.pid)

    timer = threading.Timer(wall_seconds, on_timeout)
    timer.daemon = True
    timer.start()
    try:
        try:
            assert process.stdin is not None
            process.stdin.write(payload)
            process.stdin.close()
        except BrokenPipeError:
            pass  # the child died first; its exit status says why
        # WNOWAIT leaves the child a zombie, so its pid and process group cannot be reused while the timer
        # might still fire; it is reaped only once the timer is out of the way.
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with lock:
            state["exited"] = True
        timer.cancel()
        _kill_group(process.pid)  # anything the model's runtime left behind in the group
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        # The worker itself is being stopped (Celery soft time limit, shutdown): never leave the child running.
        timer.cancel()
        _kill_group(process.pid)
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildExit(
        returncode=process.returncode,
        timed_out=state["timed_out"],
        # Not ru_maxrss: Linux carries the forking parent's peak across exec, so it would be the worker's.
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
        wall_seconds=round(time.monotonic() - started, 3),
    )


def exit_reason(child: ChildExit, limits: ResourceLimits, tail: str) -> str:
    """Why the child did not deliver a final result, in the words the report uses."""
    name = child.signal_name
    if child.timed_out:
        return f"timed out after {_seconds(limits.wall_seconds)} s"
    if name == "SIGXCPU" or (name == "SIGKILL" and child.cpu_seconds >= limits.cpu_seconds):
        return f"exceeded the CPU time limit of {_seconds(limits.cpu_seconds)} s"
    if is_allocation_failure(tail):
        return memory_limit_reason(limits.memory_mb) + (f" (crashed with {name})" if name else "")
    if name == "SIGKILL":
        return "was killed (signal SIGKILL), most likely by the kernel's out-of-memory killer"
    if name:
        return f"crashed (signal {name})"
    if child.returncode:
        last = tail.strip().splitlines()[-1:] or ["no output"]
        return f"the validation process failed (exit code {child.returncode}): {last[0]}"
    return "the validation process exited without a result"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - _TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _error(config: ValidationConfig, summary: str) -> PipelineResult:
    result = PipelineResult(outcome=Outcome.ERROR, summary=f"error: {summary}",
                            environment=environment(intra_op_threads=config.intra_op_threads))
    result.steps = [StepResult(name, StepStatus.NOT_EXECUTED, 0.0, f"not run: {summary}") for name in STEP_NAMES]
    result.gates = gates.evaluate(config.gates, result.metrics, result.baseline_deltas)
    return result


def _failed_midway(progress: dict[str, Any], reason: str, config: ValidationConfig, tail: str) -> PipelineResult:
    """The child's partial report, with the step it was running failed for `reason` and the rest not run."""
    result = PipelineResult.from_dict(progress["result"])
    done = {step.name for step in result.steps}
    current = progress.get("current_step") or next(name for name in STEP_NAMES if name not in done)
    running_ms = max(0.0, (time.time() - float(progress.get("at", time.time()))) * 1000)
    result.steps.append(StepResult(current, StepStatus.FAILED, round(running_ms, 3), reason,
                                   {"output_tail": tail[-1500:]}))
    result.steps += [StepResult(name, StepStatus.NOT_EXECUTED, 0.0, f"not run: the validation process {reason}")
                     for name in STEP_NAMES if name not in done and name != current]
    result.gates = gates.evaluate(config.gates, result.metrics, result.baseline_deltas)
    result.outcome = Outcome.FAILED
    result.summary = f"failed: {current}: {reason}"
    return result


def run_isolated(model_path: str | os.PathLike[str], config: ValidationConfig, *,
                 tmp_dir: str | None = None) -> PipelineResult:
    """Validates the model in a limited child process; never raises for a bad model.

    The outcome is "error" only when the validation machinery itself failed (the child could not start,
    or died before it began validating: limits too small for Python and onnxruntime themselves).
    """
    with tempfile.TemporaryDirectory(prefix="hotswap-validate-", dir=tmp_dir) as scratch_name:
        scratch = Path(scratch_name)
        result_path, log_path, work_dir = scratch / "result.json", scratch / "child.log", scratch / "work"
        work_dir.mkdir()
        command = [sys.executable, "-m", CHILD_MODULE, os.path.abspath(model_path), str(result_path), str(work_dir)]
        try:
            with open(log_path, "wb") as log:
                # The result travels in result.json; the child's stdout and stderr (onnxruntime's logging,
                # faulthandler's stacks) go to a log file, so no library noise can corrupt it.
                process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=work_dir, env=_child_env(), start_new_session=True)
        except OSError as exc:
            return _error(config, f"could not start the validation process: {exc}")
        child = supervise(process, json.dumps(config.to_dict()).encode(), config.limits.wall_seconds)
        progress = _read_json(result_path)
        tail = _tail(log_path)
        if child.returncode == 0 and progress and progress.get("final") and progress.get("result"):
            result = PipelineResult.from_dict(progress["result"])
        else:
            reason = exit_reason(child, config.limits, tail)
            if progress and progress.get("result"):
                result = _failed_midway(progress, reason, config, tail)
            else:
                result = _error(config, f"the validation process {reason} before it began validating"
                                if not reason.startswith("the validation process") else reason)
                result.isolation["output_tail"] = tail[-1500:]
        result.isolation.update(asdict(child), signal=child.signal_name, limits=asdict(config.limits),
                                peak_rss_mb=(progress or {}).get("peak_rss_mb"))
        return result
