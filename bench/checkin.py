"""Check-in bench: requests/s and p50/p99 of the device check-in next to a trivial JSON view (the ceiling).

Run with `make bench-checkin` (or `.venv/bin/python bench/checkin.py --seconds 10 --repeat 3`). It starts its
own SeaweedFS and gunicorn, uses the machine's PostgreSQL/Redis when they answer (else the embedded ones),
registers 10,000 devices running one model and 10,000 running three (half of each with desired versions, so
answers carry one signed manifest per slot), learns each device's ETag with one real check-in, then drives wrk
(apt-get install wrk) from loopback, all side by side in one run:

  ceiling   GET /health                                   a trivial JSON view on the same server
  (a) 304   POST /api/v1/devices/checkin, If-None-Match   the device's current ETag → 304, no body
  (b) +win  the same, carrying one metric window          buffered in Redis, flushed to PostgreSQL in chunks
  (c) 304   (a) by a device running three models          three slots read, one ETag over the set
  (d) +win  (c) carrying one window per model (three)

All four must stay at >= 0.5 of the ceiling. (a) and (b) also run twice: as fast as the server answers
(throughput, ratio to the ceiling), and paced at --rate check-ins/s offered (1,700: 100,000 devices polling
every 60 s), where p99 is judged. A saturated closed loop's latency is only its queue (connections ÷
throughput); the fleet's load is the paced one.

A flusher runs beside gunicorn all along, as Celery beat runs them in the product: metric_windows_flush every
METRIC_FLUSH_SECONDS and heartbeats_flush (last_seen, health, each slot's running version) every
HEARTBEAT_FLUSH_SECONDS. Its CPU is counted with the rest, and at the end the bench checks that every window a
check-in was answered for is in PostgreSQL.

Under the table, the CPU time each request cost the web workers, the flusher, PostgreSQL, Redis and
wrk (all share the two cores, so every microsecond saved anywhere is throughput). Each measure is the median of
--repeat runs of --seconds each, all interleaved so drift hits all alike. `--sweep` instead compares
gunicorn worker set-ups with short runs. Everything it made is removed at the end (--keep keeps the
scratch directory with the logs).

gunicorn set-up: `-k gthread -w 3 --threads 2`, chosen with --sweep on the 2-core machine, where wrk,
PostgreSQL and Redis share the cores with the web workers. Three processes keep both cores busy while
one waits on PostgreSQL or Redis, two threads each overlap those waits; more processes (4, 6) or
threads only added context switches. Once check-ins took the short road (2026-11-24), sync workers
(-w 2, 3) came level with it (~1,700-1,750 check-ins/s) in spite of a TCP handshake per answer, but a
sync worker is blocked for the whole of a multi-GB upload, so the product keeps gthread. The access
log is off (runstack keeps it on; one line per check-in is I/O a fleet's check-ins should not pay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil
import psycopg

from bench._stack import (
    BASE_DIR,
    BenchError,
    bench_stack,
    make_onnx,
    parse_args,
    start_gunicorn,
    stop_process_group,
)
from hotswap.lib.localservices import free_port

BUCKET = "hotswap-bench-checkin"
BENCH_DB = "hotswap_bench_checkin"
REDIS_DB = 7
LUA = Path(__file__).resolve().parent / "checkin.lua"
CHECKIN = "/api/v1/devices/checkin"
TARGET_RPS, TARGET_P99_MS, TARGET_RATIO = 1700, 50.0, 0.5
# Worker set-ups --sweep compares: (worker class, workers, threads per worker).
SWEEP = [("sync", 2, 1), ("sync", 3, 1), ("sync", 4, 1), ("sync", 6, 1),
         ("gthread", 2, 4), ("gthread", 3, 2), ("gthread", 4, 2), ("gthread", 4, 1)]
MODES = ("health", "304", "metrics", "304x3", "metricsx3")
LABELS = {"health": "ceiling: GET /health", "304": "(a) check-in, 304 path", "metrics": "(b) check-in + window",
          "304x3": "(c) 3 models, 304 path", "metricsx3": "(d) 3 models + 3 windows"}
# Metric windows each check-in of a mode carries.
WINDOWS_PER_CHECKIN = {"metrics": 1, "metricsx3": 3}
# The same check-ins paced at a fixed offered rate (--rate): their latency at the fleet's load.
PACED = {"paced-304": "304", "paced-metrics": "metrics"}


@dataclass
class WrkResult:
    """One wrk run, as the Lua script's done() reported it."""

    requests: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    ok: int
    not_modified: int
    other: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    late: int = 0  # paced runs: requests sent behind their schedule (the server could not keep up)
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU time per request by process group

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def p50_ms(self) -> float:
        return self.p50_us / 1000

    @property
    def p99_ms(self) -> float:
        return self.p99_us / 1000

    @property
    def failures(self) -> int:
        return self.other + self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed. Install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) "
                         "and run the bench again.")
    print("wrk is not installed: apt-get install -y wrk")
    for command in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        subprocess.run(command, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if found := shutil.which("wrk"):
            return found
    raise BenchError("could not install wrk with apt-get; install it (it is the Debian package 'wrk') and retry")


def checkin_bodies(models: list[dict]) -> tuple[dict, str]:
    """The 304-path body (what the device runs, its health) and the same with one metric window template per model."""
    body = {"protocol": 2, "models": models,
            "health": {"cpu_percent": 21.5, "memory_percent": 48.2, "disk_percent": 63.0}}
    windows = [{"model": running["model"], "version": running["version"], "window_start": "{START}",
                "window_end": "{END}", "inference_count": 600, "error_count": 1,
                "latency_ms": {"p50": 3.1, "p95": 5.0, "p99": 7.2},
                "latency_histogram": [0, 0, 12, 500, 80, 8, 0, 0, 0, 0, 0, 0, 0],
                "accuracy": 0.93, "labelled_count": 50} for running in models]
    return body, json.dumps({**body, "metrics": windows}, separators=(",", ":"))


async def learn_etags(base: str, credentials: list[str], body: dict, concurrency: int = 100) -> list[str]:
    """One real check-in per device (as a device coming online would); returns each device's ETag."""
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def one(credential: str) -> str:
            async with limit:
                for attempt in range(3):  # a server saturated by this warm-up may reset a connection
                    try:
                        response = await client.post(CHECKIN, json=body,
                                                     headers={"Authorization": f"Device {credential}"})
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        await asyncio.sleep(0.5 * (attempt + 1))
            if response.status_code != 200 or not response.headers.get("ETag"):
                raise BenchError(f"POST {CHECKIN} answered {response.status_code} (expected 200 with an ETag): "
                                 f"{response.text[:500]}")
            return response.headers["ETag"]

        return await asyncio.gather(*(one(c) for c in credentials))


def check_window_body(base: str, credential: str, etag: str, template: str) -> None:
    """The metric-window body must pass the server's validation, or the bench would measure 400s."""
    now = time.time()
    body = template.replace("{START}", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)))
    body = body.replace("{END}", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    response = httpx.post(f"{base}{CHECKIN}", content=body, timeout=30, headers={
        "Authorization": f"Device {credential}", "If-None-Match": etag, "Content-Type": "application/json"})
    if response.status_code not in (200, 304):
        raise BenchError(f"a check-in with a metric window answered {response.status_code}: {response.text[:800]}")


CPU_GROUPS = ("web", "flush", "postgres", "redis", "wrk")
FLUSHER_MARK = "hotswap-bench-metric-flusher"
# What Celery beat does in the product, without Celery: both flushes on their schedules.
FLUSHER = f"""# {FLUSHER_MARK}
import sys, time, django
django.setup()
from django.conf import settings
from devices.heartbeats import heartbeats_flush
from devices.services.telemetry import metric_windows_flush
schedule = settings.CELERY_BEAT_SCHEDULE
windows_every = schedule["flush-metric-windows"]["schedule"].total_seconds()
heartbeats_every = schedule["flush-device-heartbeats"]["schedule"].total_seconds()
heartbeats_due = time.monotonic() + heartbeats_every
while True:
    metric_windows_flush()
    if "--once" in sys.argv or time.monotonic() >= heartbeats_due:
        heartbeats_flush()
        heartbeats_due = time.monotonic() + heartbeats_every
    if "--once" in sys.argv:
        break
    time.sleep(windows_every)
"""


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU time (user + system) used so far by each process the bench shares the cores with: pid → (group, s)."""
    found = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        name, cmdline, times = process.info["name"] or "", process.info["cmdline"] or [], process.info["cpu_times"]
        if times is None:
            continue
        if name.startswith("postgres"):
            group = "postgres"
        elif name.startswith("redis-server"):
            group = "redis"
        elif any("gunicorn" in part for part in cmdline[:2]):
            group = "web"
        elif any(FLUSHER_MARK in part for part in cmdline):
            group = "flush"
        else:
            continue
        found[process.pid] = (group, times.user + times.system)
    return found


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by group between two readings (a process that ended in between is not counted)."""
    used = dict.fromkeys(CPU_GROUPS, 0.0)
    for pid, (group, seconds) in after.items():
        used[group] += seconds - before.get(pid, (group, 0.0))[1]
    return used


@dataclass
class WindowTally:
    """Metric windows check-ins were answered for, and at most how many were in flight when a run stopped."""

    answered: int = 0
    in_flight: int = 0


WINDOWS = WindowTally()


def check_windows_stored(env: dict[str, str], tally: WindowTally) -> None:
    """Every window a check-in was answered for must be in PostgreSQL once: none lost, none doubled.

    wrk stops counting at the end of a run with up to one request per connection in flight, which the
    server still stores: those may be more.
    """
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        stored = conn.execute("SELECT count(*) FROM devices_metricwindow").fetchone()[0]
    print(f"\n  metric windows: {tally.answered:,} answered, {stored:,} stored in PostgreSQL "
          f"(up to {tally.in_flight:,} more may have been in flight when wrk stopped)")
    if not tally.answered <= stored <= tally.answered + tally.in_flight:
        raise BenchError(f"{tally.answered:,} metric windows were answered for but {stored:,} are stored")


def run_wrk(wrk: str, base: str, mode: str, *, seconds: float, threads: int, connections: int,
            devices_files: dict[str, Path], bodies: dict[str, Path], rate: float | None = None) -> WrkResult:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(LUA), base, "--", "health" if mode == "health" else "checkin", str(threads)]
    if mode != "health":
        argv += [str(devices_files[mode]), str(bodies[mode])]
    before, children_before = cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "BENCH_RATE": str(rate)} if rate else None
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, env=env)
    used = cpu_used(before, cpu_seconds())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk has exited: its time is a waited child's
    used["wrk"] = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    run = WrkResult(**json.loads(line.removeprefix("WRK_RESULT ")))
    if mode in WINDOWS_PER_CHECKIN:  # each answered check-in carried its windows
        WINDOWS.answered += (run.ok + run.not_modified) * WINDOWS_PER_CHECKIN[mode]
        WINDOWS.in_flight += connections * WINDOWS_PER_CHECKIN[mode]
    run.cpu_us = {group: used[group] / max(run.requests, 1) * 1e6 for group in CPU_GROUPS}
    return run


def measure(wrk: str, base: str, *, seconds: float, repeat: int, threads: int, connections: int,
            devices_files: dict[str, Path], bodies: dict[str, Path], rate: float | None = None,
            quiet: bool = False) -> dict[str, list[WrkResult]]:
    """Runs every mode (and, given a rate, the paced ones) once per repeat, interleaved."""
    modes = [*MODES, *(PACED if rate else ())]
    results: dict[str, list[WrkResult]] = {mode: [] for mode in modes}
    for i in range(repeat):
        for mode in modes:
            results[mode].append(run_wrk(wrk, base, PACED.get(mode, mode), seconds=seconds, threads=threads,
                                         connections=connections, devices_files=devices_files, bodies=bodies,
                                         rate=rate if mode in PACED else None))
        if not quiet:
            print(f"run {i + 1}/{repeat}: " + ", ".join(
                f"{mode} {results[mode][-1].rps:,.0f}/s p99 {results[mode][-1].p99_ms:.1f} ms" for mode in modes))
    return results


def _median(runs: list[WrkResult], attribute: str) -> float:
    return statistics.median(getattr(r, attribute) for r in runs)


def _all_answered(runs: list[WrkResult]) -> bool:
    failures = sum(r.failures for r in runs)
    if failures:
        print(f"  {'':<26} !! {failures} requests failed or answered other than 2xx/304")
    return not failures


def report(results: dict[str, list[WrkResult]], *, setup: str, fleet: dict, seconds: float, repeat: int,
           rate: float) -> bool:
    ceiling = _median(results["health"], "rps")

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(f"\nCheck-in bench: {fleet['devices']:,} devices running one model ({fleet['desired']:,} with a desired "
          f"version) and {fleet['multi_devices']:,} running three ({fleet['multi_desired']:,} with desired versions), "
          f"{setup}, median of {repeat} × {seconds:g} s\n")
    print(f"  {'path':<26} {'req/s':>9} {'p50':>9} {'p99':>9} {'÷ ceiling':>10}   304 share  runs (req/s)")
    all_ok = True
    for mode in MODES:
        runs = results[mode]
        rps, p50, p99 = _median(runs, "rps"), _median(runs, "p50_ms"), _median(runs, "p99_ms")
        answered = sum(r.ok + r.not_modified for r in runs)
        share = "" if mode == "health" else f"{sum(r.not_modified for r in runs) / max(answered, 1):>8.1%}"
        print(f"  {LABELS[mode]:<26} {rps:>9,.0f} {p50:>6.1f} ms {p99:>6.1f} ms {rps / ceiling:>10.2f}   "
              f"{share:>9}  {', '.join(f'{r.rps:,.0f}' for r in runs)}")
        all_ok = _all_answered(runs) and all_ok
    # Where the two cores go: every process on the path shares them, so a cheaper request anywhere is throughput.
    print("\n  CPU per request (µs, median)  " + "".join(f"{group:>10}" for group in (*CPU_GROUPS, "total")))
    for mode in MODES:
        per_group = [statistics.median(r.cpu_us.get(group, 0.0) for r in results[mode]) for group in CPU_GROUPS]
        print(f"  {LABELS[mode]:<29} " + "".join(f"{value:>10,.0f}" for value in (*per_group, sum(per_group))))
    print(f"\n  Paced at {rate:,.0f} check-ins/s offered (wrk sends on a fixed schedule; latency at that load)")
    print(f"  {'path':<26} {'req/s':>9} {'p50':>9} {'p99':>9} {'max':>9} {'sent late':>10}")
    for mode, plain in PACED.items():
        runs = results[mode]
        late = sum(r.late for r in runs) / max(sum(r.requests for r in runs), 1)
        print(f"  {LABELS[plain]:<26} {_median(runs, 'rps'):>9,.0f} {_median(runs, 'p50_ms'):>6.1f} ms "
              f"{_median(runs, 'p99_ms'):>6.1f} ms {_median(runs, 'max_us') / 1000:>6.1f} ms {late:>10.1%}")
        all_ok = _all_answered(runs) and all_ok
    checked = MODES[1:]
    print(f"\n  {'target':<44} " + "".join(f"{LABELS[m][:3]:>8}" for m in checked))
    checks = [
        (f">= {TARGET_RPS:,} check-ins/s at saturation", ("304", "metrics"),
         lambda m: _median(results[m], "rps") >= TARGET_RPS),
        # Kept up with the offered rate: within 2 %, the slack of wrk's millisecond timers.
        (f"{rate:,.0f}/s offered: all served, p99 <= {TARGET_P99_MS:g} ms", ("304", "metrics"),
         lambda m: _median(results[f"paced-{m}"], "rps") >= 0.98 * rate
         and _median(results[f"paced-{m}"], "p99_ms") <= TARGET_P99_MS),
        (f">= {TARGET_RATIO} of the ceiling", checked, lambda m: _median(results[m], "rps") / ceiling >= TARGET_RATIO),
    ]
    for label, modes, check in checks:
        outcomes = {m: check(m) for m in modes}
        all_ok = all_ok and all(outcomes.values())
        print(f"  {label:<44} " + "".join(f"{verdict(outcomes[m]) if m in outcomes else '—':>8}" for m in checked))
    return all_ok


def gunicorn_setup(worker_class: str, workers: int, threads: int) -> str:
    return f"gunicorn -k {worker_class} -w {workers}" + (f" --threads {threads}" if worker_class == "gthread" else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000,
                        help="registered devices running one model (default 10,000)")
    parser.add_argument("--multi-devices", type=int, default=10_000,
                        help="registered devices running three models (default 10,000)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure; the median is reported (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--rate", type=float, default=TARGET_RPS,
                        help=f"offered check-ins/s of the paced runs (default {TARGET_RPS:,}: 100,000 devices "
                             "polling every 60 s)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--worker-class", choices=("sync", "gthread"), default="gthread",
                        help="gunicorn worker class (default gthread; see --sweep)")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads per gthread worker (default 2)")
    parser.add_argument("--sweep", action="store_true",
                        help="compare the gunicorn set-ups in SWEEP with one short run each instead")
    parser.add_argument("--sweep-seconds", type=float, default=5, help="length of each sweep run (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) for inspection")
    parser.add_argument("--install-wrk", action="store_true",
                        help="only install wrk when it is missing (apt-get, as root; `make test` does it)")
    args = parse_args(parser, smoke={"devices": 20, "multi_devices": 20, "seconds": 1, "repeat": 1, "connections": 4,
                                     "rate": 50, "wrk_threads": 1, "workers": 1})

    if args.install_wrk:
        try:
            ensure_wrk()
        except BenchError as exc:  # not root: the smoke test will say what is missing
            print(exc)
        return 0
    wrk = ensure_wrk()
    env = {"LOG_LEVEL": "WARNING",
           # ETags also roll over every half manifest lifetime; a day keeps them still for the whole bench.
           "MANIFEST_TTL_SECONDS": "86400"}
    with bench_stack(prefix="checkin-", database=BENCH_DB, redis_db=REDIS_DB, bucket=BUCKET, keep=args.keep,
                     env=env, smoke=args.smoke) as stack:
        stack.env["MANIFEST_SIGNING_KEY_PATH"] = str(stack.scratch / "manifest-signing.key")
        artifact = stack.scratch / "bench-model.onnx"
        make_onnx(artifact, 64 * 1024)
        started = time.monotonic()
        credentials_files = {"one": stack.scratch / "credentials.txt", "three": stack.scratch / "credentials-3.txt"}
        setup = subprocess.run([sys.executable, str(Path(__file__).with_name("checkin_fleet.py")),
                                "--devices", str(args.devices), "--multi-devices", str(args.multi_devices),
                                "--artifact", str(artifact), "--out", str(credentials_files["one"]),
                                "--out-multi", str(credentials_files["three"])],
                               cwd=BASE_DIR, env=stack.env, capture_output=True, text=True)
        if setup.returncode != 0:
            raise BenchError(f"registering the devices failed:\n{setup.stdout[-3000:]}{setup.stderr[-3000:]}")
        fleet = json.loads(setup.stdout.strip().splitlines()[-1])
        print(f"registered {fleet['devices']:,} + {fleet['multi_devices']:,} devices (one model; three models) "
              f"in {time.monotonic() - started:.1f} s")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        setups = ([(c, w, t) for c, w, t in SWEEP] if args.sweep
                  else [(args.worker_class, args.workers, args.threads)])
        groups = {"one": ("304", "metrics", fleet["models"][:1]), "three": ("304x3", "metricsx3", fleet["models"])}
        bodies, devices_files, group_bodies = {}, {}, {}
        for group, (idle, windowed, models) in groups.items():
            body, window_template = checkin_bodies(models)
            group_bodies[group] = (body, window_template)
            bodies[idle], bodies[windowed] = (stack.scratch / f"body-{idle}.json",
                                              stack.scratch / f"body-{windowed}.json")
            bodies[idle].write_text(json.dumps(body, separators=(",", ":")))
            bodies[windowed].write_text(window_template)
            devices_files[idle] = devices_files[windowed] = stack.scratch / f"devices-{group}.txt"
        flusher = subprocess.Popen([sys.executable, "-c", FLUSHER], cwd=BASE_DIR, env=stack.env,
                                   start_new_session=True)
        sweep_rows = []
        for index, (worker_class, workers, threads) in enumerate(setups):
            stack.gunicorn = start_gunicorn(stack.env, port, stack.log, workers=workers, worker_class=worker_class,
                                            threads=threads, access_log=False)
            if index == 0:
                for group, (idle, _windowed, models) in groups.items():
                    body, window_template = group_bodies[group]
                    credentials = credentials_files[group].read_text().split()
                    started = time.monotonic()
                    etags = asyncio.run(learn_etags(base, credentials, body))
                    devices_files[idle].write_text("".join(f"{c} {e}\n"
                                                           for c, e in zip(credentials, etags, strict=True)))
                    print(f"learned {len(etags):,} ETags ({len(models)} model(s) per device) with one check-in "
                          f"each in {time.monotonic() - started:.1f} s")
                    check_window_body(base, credentials[0], etags[0], window_template)
                    WINDOWS.answered += len(models)
            # Warm every worker (imports, connections) before measuring.
            measure(wrk, base, seconds=min(2, args.seconds), repeat=1, threads=args.wrk_threads,
                    connections=args.connections, devices_files=devices_files, bodies=bodies, quiet=True)
            setup_text = gunicorn_setup(worker_class, workers, threads)
            if args.sweep:
                results = measure(wrk, base, seconds=args.sweep_seconds, repeat=1, threads=args.wrk_threads,
                                  connections=args.connections, devices_files=devices_files, bodies=bodies,
                                  quiet=True)
                sweep_rows.append((setup_text, results))
                print(f"  {setup_text:<36} " + "  ".join(
                    f"{mode} {results[mode][0].rps:>6,.0f}/s p99 {results[mode][0].p99_ms:>5.1f} ms" for mode in MODES))
            else:
                results = measure(wrk, base, seconds=args.seconds, repeat=args.repeat, threads=args.wrk_threads,
                                  connections=args.connections, devices_files=devices_files, bodies=bodies,
                                  rate=args.rate)
                ok = report(results, setup=f"{setup_text}, wrk -t{args.wrk_threads} -c{args.connections}",
                            fleet=fleet, seconds=args.seconds, repeat=args.repeat, rate=args.rate)
                if not ok:
                    print("\nsome targets were missed (see above)")
            stop_process_group(stack.gunicorn)
            stack.gunicorn = None
        stop_process_group(flusher)
        subprocess.run([sys.executable, "-c", FLUSHER, "--once"], cwd=BASE_DIR, env=stack.env, check=True)
        check_windows_stored(stack.env, WINDOWS)
    return 0

if __name__ == "__main__":
    sys.exit(main())
