"""The `hotswap` command line against a live server: gunicorn and a Celery worker with beat (validation and the
rollout orchestrator), started once for this file. The CLI runs in this process through click's runner (its real
command line and HTTP calls), or as a separate process where that is the point: as CI runs it, killed halfway,
on a pseudo-terminal, without the server's code."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command

from devices.models import Device
from hotswap.accounts.roles import Role
from hotswap_cli.main import cli
from tests.artifacts import onnx_model_bytes
from tests.live import ROOT, celery_worker, gunicorn_server

# Plain django_db: the stack's rows are committed by the module fixture, which flushes the database at the end.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

PASSWORD = "Cli-Passw0rd"
WORKER_ENV = {"ROLLOUT_TICK_SECONDS": "1", "VALIDATION_BENCHMARK_RUNS": "20",
              # Timing gates would judge the machine's load, not the CLI.
              "GATE_MAX_LATENCY_P99_MS": "5000", "GATE_MIN_THROUGHPUT_IPS": "1"}
DEVICES = ("cli-cam-1", "cli-cam-2", "cli-cam-3")
PART = 5 * 1024 * 1024  # the server's upload part size here (S3's smallest), so a few MiB make several parts


@dataclass
class Stack:
    base: str
    token: str
    home: Path

    def run(self, *args: str, env: dict | None = None, stdin: str | None = None, check: int | None = None,
            process: bool = False) -> subprocess.CompletedProcess:
        """`hotswap ARGS` configured by HOTSWAP_URL / HOTSWAP_TOKEN (unless `env` says otherwise), in this process
        (click's runner: the same command line and HTTP calls, without a Python start each time) or, `process`,
        as a separate one as CI runs it; `check`: the exit code it must end with."""
        if process:
            done = subprocess.run([sys.executable, "-m", "hotswap_cli", *args], cwd=self.home, input=stdin,
                                  env=cli_env(self, env), capture_output=True, text=True, timeout=120)
        else:
            overrides = {k: None for k in os.environ if k.startswith("HOTSWAP_") and not k.startswith("HOTSWAP_TEST")}
            overrides.update({"HOTSWAP_CONFIG": str(self.home / "config.json"), "HOTSWAP_URL": self.base,
                              "HOTSWAP_TOKEN": self.token, "COLUMNS": "120", **(env or {})})
            result = CliRunner().invoke(cli, list(args), input=stdin, env=overrides, catch_exceptions=False)
            done = subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)
        if check is not None:
            assert done.returncode == check, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str, check: int = 0, **kwargs) -> dict:
        return json.loads(self.run(*args, "--json", check=check, **kwargs).stdout)


def cli_env(stack: Stack, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSWAP_") or k.startswith("HOTSWAP_TEST")}
    env.update(PYTHONPATH=str(ROOT / "cli"), HOTSWAP_CONFIG=str(stack.home / "config.json"),
               HOTSWAP_URL=stack.base, HOTSWAP_TOKEN=stack.token, COLUMNS="120")
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        try:
            user = get_user_model().objects.create_user(username="cli-admin", password=PASSWORD)
            user.groups.add(Group.objects.get(name=Role.ADMIN))
            for device_id in DEVICES:
                Device.objects.create(device_id=device_id, name=device_id, device_type="edge-camera",
                                      region="cli-west")
            with gunicorn_server(env={"UPLOAD_PART_BYTES": str(PART)}) as (base, _server), \
                    celery_worker(beat=True, env=WORKER_ENV):
                token = requests.post(f"{base}/api/v1/auth/token", timeout=30,
                                      json={"username": "cli-admin", "password": PASSWORD}).json()["access"]
                yield Stack(base=base, token=token, home=tmp_path_factory.mktemp("cli-home"))
        finally:
            call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def model_file(stack) -> Path:
    path = stack.home / "model.onnx"
    path.write_bytes(onnx_model_bytes())
    return path


@pytest.fixture(scope="module")
def uploaded(stack, model_file) -> dict:
    """cli-net 1.0.0 uploaded with --wait --json: the CLI's JSON and its exit code."""
    done = stack.run("models", "upload", str(model_file), "--name", "cli-net", "--version", "1.0.0", "--wait",
                     "--json", process=True)
    return {"exit": done.returncode, "out": json.loads(done.stdout), "stderr": done.stderr}


def test_upload_with_wait_exits_0_once_validation_passed_and_says_so_in_json(uploaded, model_file):
    assert uploaded["exit"] == 0, uploaded
    out = uploaded["out"]
    assert out["version"]["model_id"] == "cli-net-1.0.0"
    assert out["version"]["status"] == "passed" and out["validation"]["status"] == "passed"
    assert out["version"]["size_bytes"] == model_file.stat().st_size
    assert out["upload"]["method"] == "session"  # the test server stores in S3 (SeaweedFS)
    assert out["upload"]["bytes_sent"] == model_file.stat().st_size
    assert uploaded["stderr"] == ""  # --json: no progress, nothing but the document


def test_upload_with_wait_exits_3_when_the_bytes_are_not_the_declared_ones(stack, model_file):
    # The session takes the client's word for the SHA-256; the validation worker hashes what was stored.
    done = stack.run("models", "upload", str(model_file), "--name", "cli-tampered", "--version", "1.0.0",
                     "--sha256", "ab" * 32, "--wait", "--timeout", "60", check=3)

    assert "validation of cli-tampered-1.0.0: version corrupt" in done.stderr, done.stderr
    assert "status: corrupt" in done.stdout and "distributable: False" in done.stdout


def test_models_list_show_and_report(stack, uploaded):
    listed = stack.json("models", "list", "--name", "cli-net")
    assert [v["model_id"] for v in listed["results"]] == ["cli-net-1.0.0"]
    assert stack.json("models", "show", "cli-net-1.0.0")["distributable"] is True
    report = stack.json("models", "report", "cli-net-1.0.0")
    assert report["status"] == "passed" and report["steps"]

    human = stack.run("models", "report", "cli-net-1.0.0", check=0).stdout
    assert "validation" in human and "passed" in human and "max_latency_p99_ms" in human


def test_errors_show_the_apis_code_and_message_never_a_traceback(stack, model_file):
    bad = stack.run("models", "upload", str(model_file), "--name", "cli-net", "--version", "1.0", check=1,
                    process=True)
    assert "error: VALIDATION_ERROR" in bad.stderr and "version:" in bad.stderr

    missing = stack.json("models", "show", "nope-1.0.0", check=1)
    assert missing["error"]["code"] == "MODEL_NOT_FOUND" and missing["error"]["message"]

    unreachable = stack.run("devices", "list", env={"HOTSWAP_URL": "http://127.0.0.1:9"}, check=1)
    assert "error: UNREACHABLE" in unreachable.stderr

    unconfigured = stack.run("devices", "list", env={"HOTSWAP_URL": None, "HOTSWAP_TOKEN": None}, check=1)
    assert "NOT_CONFIGURED" in unconfigured.stderr and "hotswap login" in unconfigured.stderr

    usage = stack.run("distributions", "watch", "not-a-number", check=2)
    assert "Invalid value" in usage.stderr


def test_login_saves_a_private_profile_that_later_commands_use(stack):
    env = {"HOTSWAP_URL": None, "HOTSWAP_TOKEN": None}
    wrong = stack.run("login", "--url", stack.base, "--username", "cli-admin", stdin="wrong\n", env=env, check=1)
    assert "AUTHENTICATION_FAILED" in wrong.stderr

    stack.run("login", "--url", stack.base, "--username", "cli-admin", "--profile", "ci", stdin=f"{PASSWORD}\n",
              env=env, check=0)

    config = stack.home / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    saved = json.loads(config.read_text())["profiles"]["ci"]
    assert saved["url"] == stack.base and saved["refresh"] and saved["username"] == "cli-admin"
    me = stack.json("devices", "list", "--profile", "ci", env=env)
    assert me["count"] == len(DEVICES)


def test_devices_list_and_show(stack):
    listed = stack.json("devices", "list", "--region", "cli-west")
    assert sorted(d["device_id"] for d in listed["results"]) == list(DEVICES)
    assert stack.json("devices", "show", "cli-cam-2")["region"] == "cli-west"
    human = stack.run("devices", "list", check=0).stdout
    assert all(device_id in human for device_id in DEVICES)


def create(stack: Stack, device: str, *args: str, check: int = 0) -> subprocess.CompletedProcess:
    return stack.run("distributions", "create", "--version", "cli-net-1.0.0", "--strategy", "direct",
                     "--device", device, "--config", "soak=PT1S", *args, check=check)


def test_watch_exits_5_when_the_orchestrator_rolls_the_distribution_back(stack, uploaded):
    # The device never reports its install: after the 1 s install timeout the stage fails, and the automatic
    # rollback policy rolls the distribution back.
    done = create(stack, "cli-cam-1", "--install-timeout", "1", "--max-attempts", "1", "--failure-threshold", "0",
                  "--watch", "--timeout", "60", check=5)

    assert "rolled_back" in done.stdout
    assert re.search(r"distribution \d+ created: direct of cli-net-1.0.0 to 1 devices", done.stderr)


def test_watch_exits_6_when_the_orchestrator_halts_it_and_7_once_aborted(stack, uploaded):
    created = create(stack, "cli-cam-3", "--install-timeout", "1", "--max-attempts", "1", "--failure-threshold",
                     "0", "--rollback-policy", "manual", check=0)
    distribution_id = created.stdout.strip()

    halted = stack.json("distributions", "watch", distribution_id, "--interval", "0.5", "--timeout", "60", check=6)
    assert halted["status"] == "paused" and "resume to accept it" in halted["status_reason"]

    stack.run("distributions", "abort", distribution_id, "--reason", "cli test", check=0)
    assert stack.json("distributions", "watch", distribution_id, check=7)["status"] == "aborted"

    # On a terminal: the distribution's status, then each stage with a progress bar of its devices.
    code, drawn = run_in_pty(stack, "distributions", "watch", distribution_id)
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", drawn)
    assert code == 7, drawn
    assert re.search(rf"distribution {distribution_id} aborted\s+0/1 devices active", plain), plain
    assert re.search(r"All devices\s+cancelled\s+━+\s+0/1 active, 0 installing, 1 failed", plain), plain


def test_an_operators_pause_is_watched_through_until_the_timeout(stack, uploaded):
    distribution_id = create(stack, "cli-cam-2", "--install-timeout", "600", check=0).stdout.strip()
    paused = stack.json("distributions", "pause", distribution_id, "--reason", "lunch")
    assert paused["status"] == "paused"

    waited = stack.run("distributions", "watch", distribution_id, "--interval", "0.5", "--timeout", "1", check=8)
    assert "TIMED_OUT" in waited.stderr and "paused" in waited.stderr

    status = stack.json("distributions", "status", distribution_id)
    assert status["status"] == "paused"
    stack.run("distributions", "resume", distribution_id, check=0)
    rolled_back = stack.json("distributions", "rollback", distribution_id, "--reason", "cli test")
    assert rolled_back["status"] == "rolled_back" and rolled_back["reverted_devices"] == 1
    assert "rolled_back" in stack.run("distributions", "list", check=0).stdout


def run_in_pty(stack: Stack, *args: str, columns: int = 120, timeout: float = 90) -> tuple[int, str]:
    """`hotswap ARGS` on a pseudo-terminal (as a person runs it); answers the exit code and everything drawn."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = cli_env(stack, {"COLUMNS": None, "TERM": "xterm-256color"})
    process = subprocess.Popen([sys.executable, "-m", "hotswap_cli", *args], cwd=stack.home, env=env,
                               stdin=follower, stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    drawn, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the follower side closed: the process ended
                break
            if not chunk:
                break
            drawn += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=10), drawn.decode(errors="replace")


@pytest.fixture(scope="module")
def uploaded_on_a_terminal(stack) -> tuple[int, str]:
    """cli-big 1.0.0 (2 MiB, sent at 2 MiB/s) uploaded with --wait on a pseudo-terminal."""
    big = stack.home / "big.onnx"
    big.write_bytes(onnx_model_bytes(big_initializer_bytes=2 * 1024 * 1024))
    return run_in_pty(stack, "models", "upload", str(big), "--name", "cli-big", "--version", "1.0.0", "--wait",
                      "--limit-rate", str(2 * 1024 * 1024))


def test_a_terminal_sees_a_progress_bar_with_bytes_rate_and_eta_then_the_validation(uploaded_on_a_terminal):
    code, drawn = uploaded_on_a_terminal

    assert code == 0, drawn
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", drawn)
    assert "━" in plain  # the bar
    assert re.search(r"upload big\.onnx .*\d+(\.\d+)?/\d+(\.\d+)? [kM]B .*\d+(\.\d+)? [kM]B/s", plain), plain
    assert re.search(r"\d:\d\d:\d\d", plain)  # the ETA column
    assert "validation of cli-big-1.0.0: version passed" in plain
    assert re.search(r"✓\s+\w+", plain)  # the report's steps


def test_validate_with_wait_exits_3_when_a_gate_fails_and_shows_which(stack, uploaded_on_a_terminal):
    done = stack.run("models", "validate", "cli-big-1.0.0", "--gate", "max_latency_p99_ms=0.000001", "--wait",
                     check=3)

    assert re.search(r"✗\s+max_latency_p99_ms", done.stdout), done.stdout
    assert "failed" in done.stdout


def test_an_interrupted_upload_run_again_sends_only_the_missing_parts(stack):
    artifact = stack.home / "resumed.onnx"
    artifact.write_bytes(onnx_model_bytes(big_initializer_bytes=6 * PART - 1024))
    size = artifact.stat().st_size
    args = ["models", "upload", str(artifact), "--name", "cli-resumed", "--version", "1.0.0", "--parallel", "1"]
    first = subprocess.Popen([sys.executable, "-m", "hotswap_cli", *args, "--limit-rate", str(8 * 1024 * 1024)],
                             cwd=stack.home, env=cli_env(stack), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    # What the CLI asked for: the server answers its open session with the parts stored so far.
    body = {"name": "cli-resumed", "version": "1.0.0", "framework": "onnx", "size": size,
            "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(), "filename": artifact.name}
    headers = {"Authorization": f"Bearer {stack.token}"}
    session, deadline = {"parts_done": []}, time.monotonic() + 60
    while len(session["parts_done"]) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        session = requests.post(f"{stack.base}/api/v1/uploads", json=body, headers=headers, timeout=30).json()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL, "the upload ended before it could be interrupted"
    stored = requests.get(f"{stack.base}/api/v1/uploads/{session['id']}", headers=headers, timeout=30).json()
    assert stored["status"] == "open" and stored["part_count"] == 6 and 2 <= len(stored["parts_done"]) < 6

    second = stack.run(*args, "--json", check=0)

    out = json.loads(second.stdout)["upload"]
    # A part whose last byte left just before the kill may still land: the second run finds at least the rest.
    assert out["session"] == session["id"] and 6 > out["parts_already_there"] >= len(stored["parts_done"])
    assert out["parts_sent"] == 6 - out["parts_already_there"]
    assert out["bytes_already_there"] == PART * out["parts_already_there"]
    assert out["bytes_sent"] == size - out["bytes_already_there"]
    assert "resuming upload" not in second.stderr  # --json: nothing but the document
    version = stack.json("models", "show", "cli-resumed-1.0.0")
    assert version["size_bytes"] == size and version["sha256"] == body["sha256"]


def test_local_storage_takes_the_parts_through_the_api_and_multipart_still_works(stack, tmp_path):
    """The storage of `make run`: parts are PUT to the API with the caller's token. --multipart: one POST."""
    artifact = tmp_path / "local.onnx"
    artifact.write_bytes(onnx_model_bytes(big_initializer_bytes=2 * PART))
    with gunicorn_server(env={"S3_BUCKET": "", "HOTSWAP_VAR_DIR": str(tmp_path / "var"),
                              "UPLOAD_PART_BYTES": str(PART)}) as (base, _server):
        local = {"HOTSWAP_URL": base}
        sent = stack.json("models", "upload", str(artifact), "--name", "cli-local", "--version", "1.0.0", env=local)
        posted = stack.run("models", "upload", str(artifact), "--name", "cli-local", "--version", "1.0.1",
                           "--multipart", env=local, check=0)

    assert sent["upload"]["method"] == "session" and sent["upload"]["part_count"] == 3
    assert sent["upload"]["bytes_sent"] == artifact.stat().st_size
    assert sent["version"]["model_id"] == "cli-local-1.0.0" and sent["version"]["size_bytes"] == sent["upload"][
        "bytes_sent"]
    stored = list((tmp_path / "var" / "artifacts").rglob("*"))
    assert sum(p.stat().st_size for p in stored if p.is_file()) == 2 * artifact.stat().st_size
    # In a CI log (no terminal): a line every 10 %, then what was uploaded.
    assert "upload local.onnx: 100 %" in posted.stderr
    assert "uploaded cli-local-1.0.1: " in posted.stderr and "(multipart)" in posted.stderr


def test_it_imports_nothing_from_django_or_the_server_and_runs_without_the_servers_code(tmp_path):
    code = ("import sys, hotswap_cli.main, hotswap_cli.upload, hotswap_cli.watch; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'hotswap', 'models_app', "
            "'rollouts', 'devices', 'rest_framework', 'hotswap_device')); print(bad)")
    output = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'cli')!r}); "
                             + code], cwd=tmp_path, capture_output=True, text=True, check=True)

    assert output.stdout.strip() == "[]"
