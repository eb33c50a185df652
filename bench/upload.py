"""Upload bench: API upload vs. direct boto3 multipart to the same S3 server, and the web worker's peak RSS.

Run with `make bench` (or `.venv/bin/python bench/upload.py --size-mb 500 --repeat 3`). It starts its own
SeaweedFS and gunicorn, uses the machine's PostgreSQL/Redis when they answer (else the embedded ones), and
removes everything it made when it ends. MB here means 2**20 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import requests

from bench._stack import (
    MB,
    BenchError,
    bench_stack,
    make_onnx,
    manage,
    parse_args,
    sha256_of,
    start_gunicorn,
)
from hotswap.lib.localservices import free_port

BUCKET = "hotswap-bench"
BENCH_DB = "hotswap_bench"
REDIS_DB = 8
USERNAME = "bench"
PASSWORD = f"bench-{uuid.uuid4().hex}"
RATIO_TARGET, RSS_TARGET_MB = 0.8, 150


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
    args = parse_args(parser, smoke={"size_mb": 1, "repeat": 1})
    size_target = args.size_mb * MB

    # The size limit must admit the generated artifact, which is within a few % of the asked size.
    env = {"THROTTLE_UPLOAD": "1000/hour", "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
           "ARTIFACT_MAX_BYTES": str(max(2 * 1024 * MB, int(size_target * 1.1) + MB))}
    with bench_stack(prefix="run-", database=BENCH_DB, redis_db=REDIS_DB, bucket=BUCKET, keep=args.keep,
                     env=env, smoke=args.smoke) as stack:
        artifact = stack.scratch / "bench-model.onnx"
        make_onnx(artifact, size_target)
        size = artifact.stat().st_size
        sha256 = sha256_of(artifact)
        print(f"artifact: {artifact.name}, {size / MB:.1f} MB, sha256 {sha256[:16]}…")
        manage(stack.env, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "bench@example.com")
        port = free_port()
        gunicorn = stack.gunicorn = start_gunicorn(stack.env, port, stack.log)
        base = f"http://127.0.0.1:{port}"
        token = get_token(base)
        client = stack.seaweed.client()

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

if __name__ == "__main__":
    sys.exit(main())
