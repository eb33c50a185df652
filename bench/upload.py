"""Upload bench: API upload vs. direct boto3 multipart to the same S3 server, and the web worker's peak RSS.

Run with `make bench` (or `.venv/bin/python bench/upload.py --size-mb 500 --repeat 3`). It starts its own
SeaweedFS and gunicorn, uses the machine's PostgreSQL/Redis when they answer (else the embedded ones), and
removes everything it made when it ends. MB here means 2**20 bytes.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hotswap.lib.localservices import (  # noqa: E402
    embedded_postgres_url,
    embedded_redis_url,
    free_port,
    port_open,
    start_seaweedfs,
)

MB = 1024 * 1024
BUCKET = "hotswap-bench"
BENCH_DB = "hotswap_bench"
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432"
MACHINE_REDIS = "redis://127.0.0.1:6379/8"
USERNAME = "bench"
PASSWORD = f"bench-{uuid.uuid4().hex}"
RATIO_TARGET, RSS_TARGET_MB = 0.8, 150


class BenchError(Exception):
    """A setup or upload step failed; the message says which and why."""


class MultipartBody:
    """A multipart/form-data body streamed from disk: read(n) and len() let requests send Content-Length."""

    def __init__(self, fields: dict[str, str], file_field: str, path: Path):
        boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        )
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{path.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._length = len(head) + path.stat().st_size + len(tail)
        self._parts: list = [io.BytesIO(head), path.open("rb"), io.BytesIO(tail)]

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        out = []
        while self._parts and size != 0:
            chunk = self._parts[0].read(size)
            if not chunk:
                self._parts.pop(0).close()
                continue
            out.append(chunk)
            if size > 0:
                size -= len(chunk)
        return b"".join(out)

    def __iter__(self):
        while chunk := self.read(MB):
            yield chunk

    def close(self) -> None:
        for part in self._parts:
            part.close()


class RssSampler:
    """Samples the RSS of the given processes every 20 ms in a thread; keeps the peak."""

    def __init__(self, pids: list[int]):
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for process in self.processes:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def vm_hwm(pid: int) -> int:
    """The kernel's record of the process's peak resident set (VmHWM), in bytes."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


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


def database_url(scratch: Path) -> str:
    if not port_open("127.0.0.1", 5432):
        return embedded_postgres_url(scratch / "pg")
    import psycopg

    with psycopg.connect(f"{MACHINE_PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return f"{MACHINE_PG}/{BENCH_DB}"


def drop_database(url: str) -> None:
    if url.startswith(MACHINE_PG):
        import psycopg

        with psycopg.connect(f"{MACHINE_PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def redis_url(scratch: Path) -> str:
    if not port_open("127.0.0.1", 6379):
        return embedded_redis_url(scratch / "redis" / "bench.db")
    flush_redis(MACHINE_REDIS)
    return MACHINE_REDIS


def flush_redis(url: str) -> None:
    # Database 8 belongs to the bench: throttle counters and queued validation tasks go with each run.
    import redis

    if url == MACHINE_REDIS:
        redis.Redis.from_url(url).flushdb()


def manage(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def start_gunicorn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """gunicorn exactly as runstack starts it, with one worker."""
    argv = [str(Path(sys.executable).parent / "gunicorn"), "hotswap.wsgi:application", "-b", f"127.0.0.1:{port}",
            "-k", "gthread", "--threads", "4", "-w", "1", "--timeout", "300", "--access-logfile", "-",
            "--no-control-socket"]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while not (port_open("127.0.0.1", port) and psutil.Process(proc.pid).children()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"gunicorn did not start; its log:\n{tail(log)}")
        time.sleep(0.2)
    return proc


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


def get_token(base: str) -> str:
    response = requests.post(f"{base}/api/v1/auth/token", json={"username": USERNAME, "password": PASSWORD},
                             timeout=30)
    if response.status_code != 200 or "access" not in response.text:
        raise BenchError(f"POST /api/v1/auth/token answered {response.status_code}: {response.text[:500]}")
    return response.json()["access"]


def upload_via_api(base: str, token: str, artifact: Path, version: str, sha256: str) -> float:
    """Seconds for one POST /api/v1/models of the artifact; raises BenchError unless it answers 202."""
    body = MultipartBody({"name": "bench-model", "version": version, "framework": "onnx", "sha256": sha256},
                         "artifact", artifact)
    started = time.perf_counter()
    try:
        response = requests.post(f"{base}/api/v1/models", data=body, timeout=(10, 900), headers={
            "Authorization": f"Bearer {token}", "Content-Type": body.content_type})
    finally:
        body.close()
    elapsed = time.perf_counter() - started
    if response.status_code != 202:
        raise BenchError(f"POST /api/v1/models answered {response.status_code} (expected 202): {response.text[:800]}")
    result = response.json()
    if result.get("sha256") != sha256 or result.get("size_bytes") != artifact.stat().st_size:
        raise BenchError(f"the API stored something else: {result}")
    return elapsed


def upload_direct(client, artifact: Path, key: str) -> float:
    started = time.perf_counter()
    with artifact.open("rb") as f:
        client.upload_fileobj(f, BUCKET, key)
    elapsed = time.perf_counter() - started
    client.delete_object(Bucket=BUCKET, Key=key)
    return elapsed


def report(size: int, repeat: int, api: list[float], direct: list[float], peak_rss: int, idle_rss: int) -> None:
    api_rates = [size / MB / s for s in api]
    direct_rates = [size / MB / s for s in direct]
    ratio = statistics.median(api_rates) / statistics.median(direct_rates)
    rss_mb = peak_rss / MB

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{r:.1f}" for r in rates)

    print(f"\nUpload bench: {size / MB:.0f} MB ONNX artifact, median of {repeat} run(s) (MB = 2^20 bytes)\n")
    print(f"  {'measure':<30} {'value':>12}   {'target':<14} runs")
    print(f"  {'API POST /api/v1/models':<30} {statistics.median(api_rates):>7.1f} MB/s   {'':<14} {runs(api_rates)}")
    print(f"  {'boto3 upload_fileobj':<30} {statistics.median(direct_rates):>7.1f} MB/s   {'':<14} "
          f"{runs(direct_rates)}")
    print(f"  {'ratio API / boto3':<30} {ratio:>12.2f}   {'>= 0.8':<14} {verdict(ratio >= RATIO_TARGET)}")
    print(f"  {'web worker peak RSS':<30} {rss_mb:>9.1f} MB   {'<= 150 MB':<14} {verdict(rss_mb <= RSS_TARGET_MB)}")
    print(f"  {'  of which idle (warm) worker':<30} {idle_rss / MB:>9.1f} MB")
    print(f"  {'  growth while uploading':<30} {(peak_rss - idle_rss) / MB:>9.1f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500, help="artifact size in MB (2^20 bytes); default 500")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each upload; the median is reported")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) for inspection")
    args = parser.parse_args()
    size_target = args.size_mb * MB

    (BASE_DIR / "var" / "bench").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=BASE_DIR / "var" / "bench"))
    if not args.keep:
        atexit.register(shutil.rmtree, scratch, True)  # registered first, so it runs after the servers stop
    gunicorn = seaweed = db_url = redis_at = None
    log = scratch / "gunicorn.log"
    try:
        print(f"scratch directory: {scratch}")
        artifact = scratch / "bench-model.onnx"
        make_onnx(artifact, size_target)
        size = artifact.stat().st_size
        sha256 = sha256_of(artifact)
        print(f"artifact: {artifact.name}, {size / MB:.1f} MB, sha256 {sha256[:16]}…")

        seaweed = start_seaweedfs(scratch / "seaweedfs", BUCKET)
        db_url, redis_at = database_url(scratch), redis_url(scratch)
        env = {k: v for k, v in os.environ.items() if k not in ("HOTSWAP_TEST_SERVICES", "CELERY_BROKER_URL")}
        env.update(
            DATABASE_URL=db_url, REDIS_URL=redis_at, S3_ENDPOINT_URL=seaweed.endpoint_url, S3_BUCKET=BUCKET,
            S3_ACCESS_KEY_ID=seaweed.access_key, S3_SECRET_ACCESS_KEY=seaweed.secret_key, S3_REGION=seaweed.region,
            THROTTLE_UPLOAD="1000/hour", DJANGO_SETTINGS_MODULE="hotswap.settings.base",
            ARTIFACT_MAX_BYTES=str(max(2 * 1024 * MB, size + MB)), DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        )
        print(f"services: S3 {seaweed.endpoint_url}, PostgreSQL {db_url}, Redis {redis_at}")
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(env, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "bench@example.com")
        port = free_port()
        gunicorn = start_gunicorn(env, port, log)
        base = f"http://127.0.0.1:{port}"
        token = get_token(base)
        client = seaweed.client()

        api_times, direct_times, peak = [], [], 0
        # The worker's own footprint (Django, DRF, boto3, psycopg...) once warm, before any upload.
        requests.get(f"{base}/api/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        idle = max(psutil.Process(p.pid).memory_info().rss for p in psutil.Process(gunicorn.pid).children())
        for i in range(args.repeat):
            workers = [p.pid for p in psutil.Process(gunicorn.pid).children()]
            with RssSampler(workers) as sampler:
                api_times.append(upload_via_api(base, token, artifact, f"1.0.{i}", sha256))
            peak = max([peak, sampler.peak, *(vm_hwm(pid) for pid in workers)])
            direct_times.append(upload_direct(client, artifact, f"direct/{uuid.uuid4().hex}"))
            print(f"run {i + 1}/{args.repeat}: API {size / MB / api_times[-1]:.1f} MB/s, "
                  f"boto3 {size / MB / direct_times[-1]:.1f} MB/s")
        report(size, args.repeat, api_times, direct_times, peak, idle)
        return 0
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        if log.exists():
            print(f"\ngunicorn log (last lines):\n{tail(log)}", file=sys.stderr)
        return 1
    finally:
        if gunicorn:
            stop_process_group(gunicorn)
        if seaweed:
            seaweed.stop()
        if db_url:
            drop_database(db_url)
        if redis_at:
            flush_redis(redis_at)


if __name__ == "__main__":
    sys.exit(main())
