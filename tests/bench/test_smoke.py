"""Every benchmark still runs: each bench/ script with --smoke (tiny sizes) ends well and prints its figures.

The figures are only printed, never judged here: a smoke run on a busy machine measures nothing. The scripts
run side by side (each has its own database, Redis, SeaweedFS and ports), most of their time being waits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live import ROOT

# A line of each script's report, figures included (the report comes last, after every measuring step).
REPORTS = {
    "upload": r"hotswap CLI \(upload session, direct\) +[\d.]+ MB/s",
    "checkin": r"\(a\) check-in, 304 path +[\d,]+ +[\d.]+ ms +[\d.]+ ms",
    "telemetry": r"version aggregate, last 5 min +[\d.]+ ms",
    "validation": r"whole run_isolated validation of a \d+ MiB model .*: [\d.]+ s wall",
    "rollback": r"visible: first check-in answer carrying it +[\d.]+s",
    "distribution": r"create \(filter, plan, assignments\) +[\d,]+ +[\d.]+",
    "metrics": r"GET /metrics, from the shared cache +[\d.]+ ms",
}
TIMEOUT = 600
# What the test run points at its own servers; a bench finds or starts its own.
RUN_ONLY = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX", "MANIFEST_SIGNING_KEY",
            "DJANGO_SETTINGS_MODULE")


def bench_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in RUN_ONLY and not k.startswith(("S3_", "HOTSWAP_TEST_"))}


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The selected scripts started at once with --smoke; script → (process, output file, start time)."""
    scripts = [item.callspec.params["script"] for item in request.session.items
               if item.module is request.module and hasattr(item, "callspec")]
    logs = tmp_path_factory.mktemp("bench-smoke")
    runs = {}
    for script in scripts:
        output = logs / f"{script}.log"
        with output.open("wb") as out:
            runs[script] = (subprocess.Popen([sys.executable, f"bench/{script}.py", "--smoke"], cwd=ROOT,
                                             env=bench_environment(), stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True), output, time.monotonic())
    yield runs
    for process, _, _ in runs.values():
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(REPORTS))
def test_it_runs_the_bench_in_smoke_mode_and_prints_its_figures(script, smoke_runs):
    process, output, started = smoke_runs[script]
    try:
        status = process.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench/{script}.py --smoke still running after {TIMEOUT} s:\n{tail(output)}")
    text = output.read_text(errors="replace")
    print(f"bench/{script}.py --smoke: exit {status} after {time.monotonic() - started:.0f} s")
    assert status == 0, f"bench/{script}.py --smoke failed (exit {status}):\n{tail(output)}"
    assert re.search(REPORTS[script], text), f"bench/{script}.py --smoke printed no figures:\n{tail(output)}"


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
