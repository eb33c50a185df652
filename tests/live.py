"""A real gunicorn serving the test database, for tests that need a server process (memory, sockets)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from django.db import connection

from hotswap.celery import routed_queues
from hotswap.lib.localservices import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """The URL of the test database pytest-django created, for child processes."""
    params = connection.get_connection_params()
    host = params.get("host") or "127.0.0.1"
    user = params.get("user") or "postgres"
    password = f":{params['password']}" if params.get("password") else ""
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{connection.settings_dict['NAME']}?host={host}"
    port = params.get("port") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{connection.settings_dict['NAME']}"


@contextmanager
def serving(argv: list[str], *, port: int, probe: str, env: dict[str, str], stdout, stderr, log_text):
    """Starts a web server (`argv`, listening on `port`) and waits until `probe` answers; yields (base_url, process).

    On leaving it is stopped with SIGTERM and waited for (its shutdown lines reach its logs), its workers
    killed if it hangs. `log_text()` gives what it logged, for the error when it does not start.
    """
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base_url}{probe}", timeout=10)
                break
            except requests.RequestException:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not start: {log_text()[-2000:]}") from None
                time.sleep(0.2)
        yield base_url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its workers too
            process.wait()


@contextmanager
def gunicorn_server(*, env: dict[str, str] | None = None, workers: int = 1):
    """Starts gunicorn on a free port against the test database; yields (base_url, process)."""
    port = free_port()
    child_env = {**os.environ, "DATABASE_URL": test_database_url(), "DJANGO_SETTINGS_MODULE": "hotswap.settings.test",
                 **(env or {})}
    argv = [str(Path(sys.executable).parent / "gunicorn"), "hotswap.wsgi:application", "-b", f"127.0.0.1:{port}",
            "-k", "gthread", "--threads", "4", "-w", str(workers), "--timeout", "120", "--no-control-socket"]
    # Logs go to a file: a pipe nobody reads fills up, and the server then blocks on its next log line.
    with tempfile.TemporaryFile() as log:

        def log_text() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        with serving(argv, port=port, probe="/api/v1/models", env=child_env, stdout=subprocess.DEVNULL, stderr=log,
                     log_text=log_text) as running:
            yield running


@contextmanager
def runstack_gunicorn(tmp_path: Path, *, env: dict[str, str] | None = None, workers: int = 1, name: str = "gunicorn",
                      extra_args: tuple[str, ...] = ()):
    """gunicorn with runstack's own command line (its worker and logger), plus `extra_args`; yields (base_url,
    stdout, stderr files).

    On leaving, gunicorn is stopped with SIGTERM and waited for, so its shutdown lines are in the files too.
    """
    from hotswap.management.commands.runstack import gunicorn_command

    port = free_port()
    argv = [*gunicorn_command(f"127.0.0.1:{port}", workers), *extra_args]
    child_env = {**os.environ, "DATABASE_URL": test_database_url(), "DJANGO_SETTINGS_MODULE": "hotswap.settings.test",
                 **(env or {})}
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr, serving(
            [str(Path(sys.executable).parent / argv[0]), *argv[1:]], port=port, probe="/health", env=child_env,
            stdout=stdout, stderr=stderr, log_text=err.read_text) as (base, _process):
        yield base, out, err


class StreamingMultipart:
    """A multipart/form-data body read from a file in chunks, with a known length: uploads without holding bytes.

    `throttle` (seconds per chunk) slows the client down, to act on the server mid-upload.
    """

    boundary = "hotswap-test-boundary-7d1f"

    def __init__(self, fields: dict[str, str], path: Path, *, filename: str = "model.onnx",
                 chunk: int = 1024 * 1024, throttle: float = 0.0, on_chunk=None):
        head = "".join(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields.items())
        head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n")
        self.head, self.tail = head.encode(), f"\r\n--{self.boundary}--\r\n".encode()
        self.path, self.chunk, self.throttle, self.on_chunk = path, chunk, throttle, on_chunk
        self.length = len(self.head) + path.stat().st_size + len(self.tail)
        self.sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        yield self.head
        with open(self.path, "rb") as handle:
            while data := handle.read(self.chunk):
                self.sent += len(data)
                if self.on_chunk:
                    self.on_chunk(self.sent)
                if self.throttle:
                    time.sleep(self.throttle)
                yield data
        yield self.tail


def rss_peak_reset(pid: int) -> None:
    """Resets the kernel's peak-RSS counter (VmHWM) of a process."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_kb(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextmanager
def celery_worker(*, beat: bool = False, env: dict[str, str] | None = None):
    """A real Celery worker process (optionally with embedded beat) on the test database and broker."""
    scratch = Path(tempfile.mkdtemp(prefix="hotswap-worker-"))
    child_env = {**os.environ, "DATABASE_URL": test_database_url(), "DJANGO_SETTINGS_MODULE": "hotswap.settings.test",
                 **(env or {})}
    command = [str(Path(sys.executable).parent / "celery"), "-A", "hotswap", "worker", "-l", "info",
               "--concurrency", "1", "--pool", "solo", "-Q", ",".join(routed_queues())]
    if beat:
        command += ["-B", "-s", str(scratch / "beat-schedule")]
    log = scratch / "celery.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]):
    """A threaded HTTP server on a free loopback port answering with `handler`; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
