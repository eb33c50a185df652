"""Upload bench: the hotswap CLI's direct path (an upload session: parts PUT straight to S3) against a raw boto3
multipart upload of the same bytes to the same S3 server; the web worker's RSS meanwhile; and a resumed upload.

Run with `make bench-upload` (or `.venv/bin/python bench/upload.py --size-mb 1907 --repeat 2`). It starts its
own SeaweedFS and gunicorn, uses the machine's PostgreSQL/Redis when they answer (else the embedded ones), runs
the real CLI (`python -m hotswap_cli`, cli/) as a separate process, and removes everything it made when it ends.
MB here means 2**20 bytes; the default artifact is 2 GB (1907 MB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import psutil
import requests
from onnx import TensorProto, helper

from bench._stack import BASE_DIR, MB, BenchError, bench_stack, manage, parse_args, sha256_of, start_gunicorn
from hotswap.lib.localservices import free_port

BUCKET = "hotswap-bench"
BENCH_DB = "hotswap_bench"
REDIS_DB = 8
USERNAME = "bench"
PASSWORD = f"bench-{uuid.uuid4().hex}"
RATIO_TARGET, RSS_GROWTH_TARGET_MB = 0.95, 32
MODEL = "bench-model"


def write_onnx(path: Path, size_bytes: int) -> None:
    """A real ONNX model (Input[1,4] -> MatMul(W[4,N]) -> Output[1,N]) of about size_bytes, written in chunks.

    The weight's bytes are streamed to disk after the rest of the model: protobuf merges a second occurrence of
    the graph field into the first, so the file is `model without weight` + `graph { initializer { weight } }`,
    and no 2 GB message is ever built in memory.
    """
    columns = max(1, size_bytes // 16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])], "bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, columns])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    weight = TensorProto(name="weight", dims=[4, columns], data_type=TensorProto.FLOAT)
    raw_length = 4 * columns * 4
    tensor_head = weight.SerializeToString() + _tag(9) + _varint(raw_length)  # TensorProto.raw_data
    initializer_head = _tag(5) + _varint(len(tensor_head) + raw_length) + tensor_head  # GraphProto.initializer
    graph_head = _tag(7) + _varint(len(initializer_head) + raw_length)  # ModelProto.graph
    rng = np.random.default_rng(7)
    with path.open("wb") as out:
        out.write(model.SerializeToString() + graph_head + initializer_head)
        left = raw_length
        while left:
            block = rng.random(min(left, 16 * MB) // 4, dtype=np.float32).tobytes()
            out.write(block)
            left -= len(block)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | 2)  # a length-delimited field


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


def get_token(base: str) -> str:
    response = requests.post(f"{base}/api/v1/auth/token", json={"username": USERNAME, "password": PASSWORD},
                             timeout=30)
    if response.status_code != 200 or "access" not in response.text:
        raise BenchError(f"POST /api/v1/auth/token answered {response.status_code}: {response.text[:500]}")
    return response.json()["access"]


class Cli:
    """The hotswap CLI of this repository (cli/), run as CI runs it: a separate process, configured by env."""

    def __init__(self, base: str, token: str, scratch: Path, artifact: Path, sha256: str):
        self.artifact, self.sha256 = artifact, sha256
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOTSWAP_")},
                    "PYTHONPATH": str(BASE_DIR / "cli"), "HOTSWAP_URL": base, "HOTSWAP_TOKEN": token,
                    "HOTSWAP_CONFIG": str(scratch / "cli-config.json")}

    def argv(self, version: str) -> list[str]:
        # --sha256: the hash is known, as it is to boto3's upload; both sides time the transfer alone.
        return [sys.executable, "-m", "hotswap_cli", "models", "upload", str(self.artifact), "--name", MODEL,
                "--version", version, "--sha256", self.sha256, "--json"]

    def start(self, version: str, *options: str) -> subprocess.Popen:
        return subprocess.Popen([*self.argv(version), *options], cwd=BASE_DIR, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def upload(self, version: str) -> tuple[float, dict]:
        """Seconds for one whole `hotswap models upload` and its JSON; BenchError unless it used a session."""
        started = time.perf_counter()
        process = self.start(version)
        out, err = process.communicate(timeout=1800)
        elapsed = time.perf_counter() - started
        if process.returncode != 0:
            raise BenchError(f"hotswap models upload exited {process.returncode}:\n{out}\n{err}")
        result = json.loads(out)
        if result["upload"]["method"] != "session":
            raise BenchError(f"the server offered no upload session: {result['upload']}")
        version_data = result["version"]
        if version_data["sha256"] != self.sha256 or version_data["size_bytes"] != self.artifact.stat().st_size:
            raise BenchError(f"the server stored something else: {version_data}")
        return elapsed, result


def upload_direct(client, artifact: Path, key: str) -> float:
    started = time.perf_counter()
    with artifact.open("rb") as f:
        client.upload_fileobj(f, BUCKET, key)
    elapsed = time.perf_counter() - started
    client.delete_object(Bucket=BUCKET, Key=key)
    return elapsed


def resumed_upload(cli: Cli, base: str, token: str, size: int, rate_mb: int | None) -> dict:
    """The CLI killed (SIGKILL) once about half of the parts are stored, then run again: what each run sent.

    `rate_mb` slows the first run down (--limit-rate) so a small artifact can be caught halfway too."""
    version = "2.0.0"
    session_body = {"name": MODEL, "version": version, "framework": "onnx", "size": size, "sha256": cli.sha256,
                    "filename": cli.artifact.name}
    headers = {"Authorization": f"Bearer {token}"}
    first = cli.start(version, *(["--limit-rate", str(rate_mb * MB)] if rate_mb else []))
    session = None
    try:
        deadline = time.monotonic() + 1800
        while first.poll() is None and time.monotonic() < deadline:
            # The same request the CLI made: the server answers the open session, with the parts it has.
            response = requests.post(f"{base}/api/v1/uploads", json=session_body, headers=headers, timeout=30)
            if response.status_code in (200, 201):
                session = response.json()
                if len(session["parts_done"]) * 2 >= session["part_count"]:
                    break
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    if session is None or first.returncode != -signal.SIGKILL:
        raise BenchError(f"the first run was not caught halfway (exit {first.returncode}, session {session})")
    stored = requests.get(f"{base}/api/v1/uploads/{session['id']}", headers=headers, timeout=30).json()
    if stored["status"] != "open" or len(stored["parts_done"]) == stored["part_count"]:
        raise BenchError(f"the first run finished before it was killed: {stored}; try --resume-rate-mb")
    _elapsed, second = cli.upload(version)
    # What the second run found stored (a part whose last bytes left just before the kill may land after it).
    upload = second["upload"]
    if upload["session"] != session["id"] or upload["bytes_sent"] != size - upload["bytes_already_there"]:
        raise BenchError(f"the resumed run did not send exactly the missing parts: {upload}")
    return {"parts": upload["part_count"], "stored_parts": upload["parts_already_there"],
            "stored_bytes": upload["bytes_already_there"], "sent": upload["bytes_sent"]}


def report(size: int, repeat: int, cli_times: list[float], direct: list[float], peak_rss: int, idle_rss: int,
           resumed: dict) -> None:
    cli_rates = [size / MB / s for s in cli_times]
    direct_rates = [size / MB / s for s in direct]
    ratio = statistics.median(cli_rates) / statistics.median(direct_rates)
    growth = (peak_rss - idle_rss) / MB

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{r:.1f}" for r in rates)

    resumed_ok = resumed["sent"] == size - resumed["stored_bytes"]
    print(f"\nUpload bench: {size / MB:.0f} MB ONNX artifact ({size:,} bytes), median of {repeat} run(s) "
          "(MB = 2^20 bytes)\n")
    print(f"  {'measure':<40} {'value':>14}   {'target':<16} runs")
    print(f"  {'hotswap CLI (upload session, direct)':<40} {statistics.median(cli_rates):>9.1f} MB/s   {'':<16} "
          f"{runs(cli_rates)}")
    print(f"  {'boto3 upload_fileobj':<40} {statistics.median(direct_rates):>9.1f} MB/s   {'':<16} "
          f"{runs(direct_rates)}")
    print(f"  {'ratio CLI / boto3':<40} {ratio:>14.2f}   {'>= 0.95':<16} {verdict(ratio >= RATIO_TARGET)}")
    print(f"  {'web worker RSS, idle (warm)':<40} {idle_rss / MB:>11.1f} MB")
    print(f"  {'web worker RSS, peak while uploading':<40} {peak_rss / MB:>11.1f} MB")
    print(f"  {'  growth while uploading':<40} {growth:>11.1f} MB   {f'<= {RSS_GROWTH_TARGET_MB} MB':<16} "
          f"{verdict(growth <= RSS_GROWTH_TARGET_MB)}")
    print(f"  {'resume: stored when the CLI was killed':<40} {resumed['stored_bytes'] / MB:>11.1f} MB   "
          f"{resumed['stored_parts']} of {resumed['parts']} parts")
    print(f"  {'resume: bytes the second run sent':<40} {resumed['sent'] / MB:>11.1f} MB   "
          f"{'= the missing part':<16} {verdict(resumed_ok)} ({resumed['sent']:,} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1907, help="artifact size in MB (2^20 bytes); default 1907 "
                                                                  "(2 GB)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each upload; the median is reported")
    parser.add_argument("--part-mb", type=int, default=None,
                        help="the server's upload part size in MB (UPLOAD_PART_BYTES; default: the server's own)")
    parser.add_argument("--resume-rate-mb", type=int, default=None,
                        help="--limit-rate of the run killed halfway, in MB/s (default: none)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) for inspection")
    args = parse_args(parser, smoke={"size_mb": 24, "repeat": 1, "part_mb": 5,
                                                  "resume_rate_mb": 8})
    size_target = args.size_mb * MB

    env = {"THROTTLE_UPLOAD": "1000/hour", "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
           **({"UPLOAD_PART_BYTES": str(args.part_mb * MB)} if args.part_mb else {})}
    with bench_stack(prefix="run-", database=BENCH_DB, redis_db=REDIS_DB, bucket=BUCKET, keep=args.keep,
                     env=env, smoke=args.smoke) as stack:
        artifact = stack.scratch / "bench-model.onnx"
        write_onnx(artifact, size_target)
        size = artifact.stat().st_size
        sha256 = sha256_of(artifact)
        print(f"artifact: {artifact.name}, {size / MB:.1f} MB, sha256 {sha256[:16]}…")
        manage(stack.env, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "bench@example.com")
        port = free_port()
        gunicorn = stack.gunicorn = start_gunicorn(stack.env, port, stack.log)
        base = f"http://127.0.0.1:{port}"
        token = get_token(base)
        client = stack.seaweed.client()
        cli = Cli(base, token, stack.scratch, artifact, sha256)

        cli_times, direct_times, peak = [], [], 0
        # The worker's own footprint (Django, DRF, boto3, psycopg...) once warm, before any upload.
        requests.get(f"{base}/api/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        workers = [p.pid for p in psutil.Process(gunicorn.pid).children()]
        idle = max(psutil.Process(pid).memory_info().rss for pid in workers)
        for i in range(args.repeat):
            # Taking turns at going first: a machine whose other load comes and goes favours neither side.
            if i % 2:
                direct_times.append(upload_direct(client, artifact, f"direct/{uuid.uuid4().hex}"))
            with RssSampler(workers) as sampler:
                elapsed, result = cli.upload(f"1.0.{i}")
            cli_times.append(elapsed)
            peak = max(peak, sampler.peak)
            if not i % 2:
                direct_times.append(upload_direct(client, artifact, f"direct/{uuid.uuid4().hex}"))
            print(f"run {i + 1}/{args.repeat}: CLI {size / MB / cli_times[-1]:.1f} MB/s "
                  f"({result['upload']['part_count']} parts), boto3 {size / MB / direct_times[-1]:.1f} MB/s")
        with RssSampler(workers) as sampler:
            resumed = resumed_upload(cli, base, token, size, args.resume_rate_mb)
        peak = max(peak, sampler.peak)
        report(size, args.repeat, cli_times, direct_times, peak, idle, resumed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
