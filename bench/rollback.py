"""Automatic rollback bench: from the first degraded window reaching the server to the rollback in check-in answers.

Run with `make bench-rollback` (or `.venv/bin/python bench/rollback.py --runs 3`). Two parts:

1. Live, 10,000 simulated devices, each running two models as real fleets do: rollnet and pairnet. It starts
   its own SeaweedFS, gunicorn, a Celery worker and beat (as runstack does, with
   ROLLOUT_JUDGE=rollouts.health.health_judge and the default 5 s tick), uses the machine's PostgreSQL and Redis
   when they answer, registers the devices in bulk as the end-to-end tests do (tests/e2e/fleets.py: credentials
   issued, one slot per model, every device on rollnet-1.0.0 and pairnet-1.0.0) and runs the fleet simulator in
   this process, every device a virtual one checking in over HTTP on the server's poll interval (--poll-seconds,
   default 60) with a metric window per model slot per check-in: rollnet-1.0.0 measures 20±2 ms, each bad
   rollnet version 30±3 ms (+50 %), pairnet-1.0.0 10±1 ms. Each run creates a canary (10 %, soak PT30M) of a
   new bad rollnet version over the whole fleet and times, from the first window of the bad version reaching
   the server (devices_metricwindow.received_at):
     - enough data to judge: the window that brought the bad version to min_devices devices and min_inferences,
     - the tick that rolls back: its start (the transition's `at`) and its commit (seen by polling the row),
     - the rollback being visible in check-in answers: the first canary device whose check-in answer carries
       the rollback manifest (rollback=true, version 1.0.0), recorded by the simulator as it reads it,
     - every canary device having had that answer, and every one running 1.0.0 again (its install report).
   Medians over --runs runs; target: visible within 10 s (the issue's bound is 60 s).
   After each run it checks that the rollback left the other model alone, and fails if not: on every device
   the pairnet slot's desired state (version, sequence, rollback, remove) is what it was before the first run,
   the server records every device running pairnet-1.0.0 (devices_modelslot), and so does every simulated
   device; and the rolled-back canary was judged on rollnet's windows only.
   Every device is simulated (none is only a row): the judge's baseline is the 9,000 devices still on 1.0.0,
   so they must really report, and the check-in load is that of a 10,000-device fleet. On a 2-core machine the
   simulator and the server share the cores: when they cannot check every device in each poll interval the
   check-ins queue in the simulator and windows arrive late and unevenly; the bench says so (see its last
   lines) and --poll-seconds or --devices relieve it.
2. The judge's cost: a canary stage of 1,000 and of 10,000 devices (10 % of fleets of 10,000 and 100,000, the
   rest the baseline), each device with --windows one-minute windows since the stage started and as many before
   it, generated in SQL; medians of --repeat calls of `rollouts.health.stage_samples`, `health_judge`, and a
   whole tick of that distribution (`distribution_advance`: it fails the stage and rolls every device back; the
   transaction is rolled back after each call).

Why a single device sees the rollback only at its next check-in: devices pull (DESIGN.md, device protocol), so
"visible" for the first canary device is ~poll interval / canary size after the rollback, for the whole canary
up to one poll interval. The server-side part is bounded by the data the judge needs (min_devices windows and
min_inferences) plus the wait for the next tick (ROLLOUT_TICK_SECONDS) plus the tick's own duration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import (
    BenchError,
    Stack,
    bench_stack,
    make_onnx,
    parse_args,
    start_celery,
    start_gunicorn,
    stop_process_group,
    tail,
)
from hotswap.lib.localservices import free_port, port_open
from hotswap_device.fleet import device_spec, parse_behaviours
from hotswap_device.simulator import CHECKIN_PATH, BackgroundFleet, Fleet, FleetConfig

BUCKET = "hotswap-bench-rollback"
BENCH_DB = "hotswap_bench_rollback"
REDIS_DB = 10
MODEL = "rollnet"  # the model whose bad versions are canaried and rolled back
OTHER = "pairnet"  # the second model every device runs; no distribution ever targets it
TARGET_SECONDS = 10.0
BOUND_SECONDS = 60.0
PREFIX = "rb-"
GOOD = "latency:20±2,errors:0.001"
BAD = "latency:30±3,errors:0.001"  # +50 % latency
OTHER_BEHAVIOUR = "latency:10±1,errors:0.001"
TICK_LINE = re.compile(r"distributions_tick\[[^\]]+\] succeeded in ([0-9.e-]+)s: (\d+)")


class TimedFleet(Fleet):
    """The simulator, noting when each device first reads an answer carrying a rollback manifest."""

    def __init__(self, config: FleetConfig, stop: asyncio.Event):
        super().__init__(config, stop)
        self.rollback_answers: dict[tuple[int, int], float] = {}  # (device index, rollnet sequence) → epoch s
        self.answered: list[float] = []  # epoch seconds of every answered check-in

    async def request(self, method: str, path: str, *, index: int = 0, **kwargs):
        response = await super().request(method, path, index=index, **kwargs)
        if path != CHECKIN_PATH or response is None:
            return response
        at = time.time()
        self.answered.append(at)
        if response.status_code == 200:
            for entry in response.json().get("desired") or []:  # protocol 2: one signed manifest per model slot
                manifest = (entry.get("manifest") if isinstance(entry, dict) else None) or {}
                if manifest.get("model") == MODEL and manifest.get("rollback") \
                        and isinstance(manifest.get("sequence"), int):
                    self.rollback_answers.setdefault((index, manifest["sequence"]), at)
        return response


def wait_for(condition: Callable[[], object], what: str, timeout: float, log: Path | None = None,
             every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise BenchError(f"not within {timeout:.0f} s: {what}" + (f"\n{tail(log)}" if log else ""))
        time.sleep(every)
    return result


def upload_version(scratch: Path, minor: int, name: str = MODEL, size: int = 4096):
    """<name>-1.<minor>.0 through the registry service (a small real ONNX model, its own bytes); validation is
    queued for the worker."""
    from models_app.services import model_version_upload
    from models_app.storage import artifact_store
    from models_app.uploads import PendingArtifact

    path = scratch / f"{name}-{minor}.onnx"
    make_onnx(path, size + 16 * minor)
    with path.open("rb") as handle:
        artifact = PendingArtifact.receive(artifact_store(), iter(lambda: handle.read(1024 * 1024), b""),
                                           filename=path.name, max_bytes=10**9)
    version, _ = model_version_upload(artifact=artifact, name=name, version=f"1.{minor}.0", framework="onnx",
                                      uploaded_by=None)
    return version


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- part 1: live ---------------------------------------------------------------------------------------------


def live_run(number: int, bad, old, fleet: BackgroundFleet, *, poll: float, log: Path, criteria: dict) -> dict:
    """One canary of a bad version over the whole fleet; the figures of its rollback."""
    from django.db.models import Min

    from devices.models import InstallReport, MetricWindow, ModelSlot
    from rollouts.models import Assignment, Distribution, Transition
    from rollouts.services import distribution_create

    distribution = distribution_create(version=bad, strategy="canary", config={"percent": 10, "soak": "PT30M"},
                                       success_criteria=criteria, name=f"rollback bench run {number}")
    canary_size = distribution.stages.get(index=0).device_count

    status = Distribution.objects.filter(pk=distribution.pk).values_list("status", flat=True)

    def ended():
        return status.get() in ("rolled_back", "completed", "paused", "aborted")
    # Offer seen at the next check-in, a window of the new version one interval after the install. Polled
    # often: when the rollback is first seen committed tells the tick's duration from its start (`at`).
    wait_for(ended, f"run {number}: the canary of {bad.model_id} is rolled back", timeout=4 * poll + 120, log=log,
             every=0.05)
    committed = time.time()
    distribution.refresh_from_db()
    if distribution.status != "rolled_back":
        raise BenchError(f"run {number}: the distribution ended {distribution.status}: {distribution.status_reason}")
    first_bad = MetricWindow.objects.filter(version=bad).aggregate(at=Min("received_at"))["at"]
    enough = _enough_at(bad, distribution.success_criteria)
    issued = Transition.objects.get(distribution=distribution, stage=None, to_status="rolled_back").at
    canary = list(Assignment.objects.filter(distribution=distribution, sequence__isnull=False)
                  .values_list("device_id", "device__device_id"))
    sequences = dict(ModelSlot.objects.filter(device_id__in=[pk for pk, _ in canary], ai_model=bad.ai_model_id)
                     .values_list("device_id", "sequence"))
    keys = {pk: (int(device_id.removeprefix(PREFIX)), sequences[pk]) for pk, device_id in canary}

    def answered() -> list[float]:
        return [at for key in keys.values() if (at := fleet.fleet.rollback_answers.get(key)) is not None]
    # Every canary device checks in within about one poll interval of the rollback.
    wait_for(lambda: len(answered()) == len(keys), f"run {number}: every canary device gets the rollback",
             timeout=3 * poll + 60)
    back = InstallReport.objects.filter(device_id__in=list(keys), version=old, status="active", received_at__gt=issued)
    wait_for(lambda: back.values("device").distinct().count() == len(keys),
             f"run {number}: every canary device runs {old.model_id} again", timeout=3 * poll + 60)
    stage = distribution.stages.get(index=0)
    judged_on = [v for side in (stage.evidence.get("versions") or {}).values() for v in side]
    if not judged_on or not all(v.startswith(f"{MODEL}-") for v in judged_on):
        raise BenchError(f"run {number}: the canary of {bad.model_id} was judged on {judged_on}, not {MODEL} alone")
    answers = sorted(answered())
    t0 = first_bad.timestamp()
    # How often each device really checked in meanwhile: the poll interval, or longer when the machine cannot
    # answer the whole fleet that often (the simulator queues the check-ins it cannot send yet).
    checkins = sum(1 for at in list(fleet.fleet.answered) if t0 <= at <= answers[-1])
    result = {
        "canary": canary_size, "judged_devices": stage.evidence["new"]["devices"],
        "increase": stage.evidence.get("latency_increase_pct"), "p": stage.evidence.get("latency_p_value"),
        "interval": len(fleet.fleet.devices) * (answers[-1] - t0) / max(checkins, 1),
        "enough": enough.timestamp() - t0, "issued": issued.timestamp() - t0, "committed": committed - t0,
        "visible": answers[0] - t0, "visible_median": median(answers) - t0, "visible_all": answers[-1] - t0,
        "back_all": max(r.timestamp() for r in back.values_list("received_at", flat=True)) - t0,
    }
    print(f"  run {number}: {bad.model_id} to {canary_size:,} canary devices, judged on {result['judged_devices']} "
          f"(p99 +{result['increase']} %, p = {result['p']}); from the first bad window: enough data "
          f"{result['enough']:.1f} s, the tick rolling back "
          f"started {result['issued']:.1f} s, committed {result['committed']:.1f} s, first answer carrying it "
          f"{result['visible']:.1f} s, every canary device "
          f"{result['visible_all']:.1f} s, every one back on {old.model_id} {result['back_all']:.1f} s; each device "
          f"checked in every {result['interval']:.0f} s meanwhile", flush=True)
    return result


def other_desired_state(other) -> dict[int, tuple]:
    """device pk → its pairnet slot's desired state: (version, sequence, rollback, remove)."""
    from devices.models import ModelSlot

    return {pk: tuple(desired) for pk, *desired in ModelSlot.objects.filter(ai_model=other.ai_model_id)
            .values_list("device_id", "version_id", "sequence", "rollback", "remove").iterator(chunk_size=5000)}


def check_other_untouched(number: int, other, before: dict[int, tuple], fleet: BackgroundFleet,
                          since: datetime) -> int:
    """Fails the bench unless rollnet's rollback left pairnet alone on every device: its slot's desired state as
    before the first run, and every device running pairnet-1.0.0 by the server's records and by its own account.
    Returns how many pairnet windows reached the server since `since` (pairnet kept reporting)."""
    from devices.models import MetricWindow, ModelSlot

    devices = len(fleet.fleet.devices)
    after = other_desired_state(other)
    changed = sorted(pk for pk in before.keys() | after.keys() if before.get(pk) != after.get(pk))
    if len(after) != devices or changed:
        examples = [(pk, before.get(pk), after.get(pk)) for pk in changed[:5]]
        raise BenchError(f"run {number}: {OTHER}'s slots changed: {len(after):,} slots for {devices:,} devices, "
                         f"{len(changed):,} with another desired state (device pk, (version, sequence, rollback, "
                         f"remove) before, after): {examples}")
    elsewhere = ModelSlot.objects.filter(ai_model=other.ai_model_id) \
        .exclude(running_version=other, reported_version=other.version)
    if elsewhere.exists():
        examples = list(elsewhere.values_list("device__device_id", "running_version", "reported_version")[:5])
        raise BenchError(f"run {number}: {elsewhere.count():,} device(s) no longer run {other.model_id} by the "
                         f"server's records (device, running version pk, reported version), e.g. {examples}")
    simulated = Counter(label for d in list(fleet.fleet.devices) for label in d.version_labels(OTHER))
    if simulated != {other.model_id: devices}:
        raise BenchError(f"run {number}: the simulated devices run {dict(simulated)} of {OTHER}")
    windows = MetricWindow.objects.filter(version=other, received_at__gte=since).count()
    print(f"  run {number}: {other.model_id} untouched: on all {devices:,} devices its slot's desired state is as "
          f"before the first run and it runs {other.model_id} (server and simulator); {windows:,} of its windows "
          "received during the run", flush=True)
    return windows


def _enough_at(bad, criteria: dict) -> datetime:
    """When the bad version's windows first covered min_devices devices and min_inferences inferences."""
    from devices.models import MetricWindow

    devices, inferences = set(), 0
    for device, count, received in MetricWindow.objects.filter(version=bad).order_by("received_at", "id") \
            .values_list("device_id", "inference_count", "received_at").iterator():
        devices.add(device)
        inferences += count
        if len(devices) >= criteria["min_devices"] and inferences >= criteria["min_inferences"]:
            return received
    raise BenchError(f"{bad.model_id}: the judge never had enough data, yet it rolled back")


def tick_durations(log: Path) -> list[float]:
    """Durations of the ticks that looked at an open distribution, from the worker's log."""
    return [float(m[1]) for m in TICK_LINE.finditer(log.read_text(errors="replace")) if int(m[2]) > 0]


def live(stack: Stack, args) -> tuple[list[dict], list[float]]:
    from models_app.models import ModelVersion
    from tests.e2e.fleets import register_fleet, seed_simulator

    versions = [upload_version(stack.scratch, n) for n in range(args.runs + 1)]
    other = upload_version(stack.scratch, 0, name=OTHER, size=3072)
    old, bad_versions = versions[0], versions[1:]
    started = time.monotonic()
    credentials = register_fleet([device_spec(i, prefix=PREFIX) for i in range(1, args.devices + 1)], (old, other))
    print(f"registered {args.devices:,} devices on {old.model_id} and {other.model_id} in "
          f"{time.monotonic() - started:.1f} s", flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack.gunicorn = start_gunicorn(stack.env, port, stack.log, workers=1 if args.smoke else 3, threads=2,
                                    access_log=False)
    worker, beat, log = start_celery(stack.env, stack.scratch)
    fleet = None
    try:
        validated = ModelVersion.objects.filter(pk__in=[v.pk for v in (*versions, other)])
        wait_for(lambda: not validated.filter(status__in=("uploaded", "validating")).exists(),
                 "the worker validates the versions", timeout=300, log=log)
        if set(validated.values_list("status", flat=True)) != {"passed"}:
            raise BenchError(f"validation: {list(validated.values_list('model_id', 'status'))}")
        old, *bad_versions = validated.filter(ai_model__name=MODEL).order_by("minor")
        other = validated.get(ai_model__name=OTHER)
        state = stack.scratch / "fleet-state.json"
        seed_simulator(state, base, credentials, (old, other), args.poll_seconds)
        behaviours = ([f"{MODEL}-{old.version}={GOOD}", f"{OTHER}-{other.version}={OTHER_BEHAVIOUR}"]
                      + [f"{MODEL}-{v.version}={BAD}" for v in bad_versions])
        fleet = BackgroundFleet(FleetConfig(server=base, devices=args.devices, prefix=PREFIX,
                                            poll_seconds=args.poll_seconds, behaviours=parse_behaviours(behaviours),
                                            concurrency=args.concurrency, state_file=state, seed=3),
                                fleet_class=TimedFleet)
        started = time.monotonic()
        wait_for(lambda: fleet.fleet.stats.checked_in_devices == args.devices or fleet.future.done(),
                 "every simulated device checks in", timeout=2 * args.poll_seconds + 120)
        if fleet.future.done():
            raise BenchError(f"the simulator stopped: {fleet.future.result().summary()}")
        checkins = fleet.fleet.stats.checkins
        time.sleep(min(10.0, args.poll_seconds))
        rate = (fleet.fleet.stats.checkins - checkins) / min(10.0, args.poll_seconds)
        print(f"{args.devices:,} simulated devices checked in within {time.monotonic() - started:.0f} s; "
              f"{rate:,.0f} check-ins/s (poll interval {args.poll_seconds:g} s)", flush=True)
        results = []
        criteria = {"min_inferences": args.min_inferences} if args.min_inferences else {}
        other_before = other_desired_state(other)
        for number, bad in enumerate(bad_versions, start=1):
            run_started = datetime.now(UTC)
            result = live_run(number, bad, old, fleet, poll=args.poll_seconds, log=log, criteria=criteria)
            result["other_windows"] = check_other_untouched(number, other, other_before, fleet, since=run_started)
            results.append(result)
        errors = fleet.fleet.stats.errors
        if errors:
            print(f"  simulator errors: {dict(errors)}")
    finally:
        if fleet is not None:
            fleet.stop(timeout=60)
        for process in (beat, worker):
            stop_process_group(process)
        stop_process_group(stack.gunicorn)
        stack.gunicorn = None
    return results, tick_durations(log)


# --- part 2: the judge's query time ----------------------------------------------------------------------------


def judge_fleet(cursor, *, fleet: int, windows: int, start: datetime, old_id: int) -> None:
    """`fleet` devices on the old version, `windows` one-minute windows each before `start` (the history)."""
    cursor.execute("TRUNCATE devices_device, rollouts_distribution CASCADE")
    cursor.execute("""
        INSERT INTO devices_device (device_id, name, device_type, region, tags, gpu, memory_mb, status,
                                    registered_at, last_seen)
        SELECT 'j-' || lpad(i::text, 8, '0'), '', 'camera', (ARRAY['eu', 'us', 'ap'])[1 + i %% 3], '{}', '', 4096,
               'active', now(), now()
        FROM generate_series(1, %(fleet)s) AS i
    """, {"fleet": fleet})
    cursor.execute("""
        INSERT INTO devices_modelslot (device_id, ai_model_id, version_id, running_version_id, remove, rollback,
                                       sequence, source, reason, traceparent, reported_version, reported_sha256,
                                       refused_reason)
        SELECT d.id, v.ai_model_id, NULL, v.id, false, false, 0, '', '', '', v.version, '', ''
        FROM devices_device d JOIN models_app_modelversion v ON v.id = %(old)s
    """, {"old": old_id})
    _windows(cursor, scope="all", version_id=old_id, version="1.0.0", latency=20.0,
             first=start - timedelta(minutes=windows), count=windows)


# Which devices get windows: every one, a stage's, or every one outside it.
_SCOPES = {"all": "true",
           "stage": "d.id IN (SELECT device_id FROM rollouts_assignment WHERE stage_id = %(stage)s)",
           "others": "d.id IN (SELECT device_id FROM rollouts_assignment WHERE stage_id <> %(stage)s)"}


def _windows(cursor, *, scope: str, version_id: int, version: str, latency: float, first: datetime, count: int,
             stage: int | None = None) -> None:
    # p99 per window: latency * 1.23 +- 5 %, the shape of the simulator's windows (p99 of Normal(mean, mean/10)).
    cursor.execute(f"""
        INSERT INTO devices_metricwindow (device_id, version_id, model_name, model_version, window_start, window_end,
            inference_count, error_count, latency_p50_ms, latency_p95_ms, latency_p99_ms, latency_histogram,
            accuracy, labelled_count, received_at)
        SELECT d.id, %(version_id)s, %(model)s, %(version)s, %(first)s + (k - 1) * interval '1 minute',
               %(first)s + k * interval '1 minute', 600, (random() * 2)::int, %(latency)s, %(latency)s * 1.16,
               %(latency)s * (1.23 + 0.1 * (random() + random() + random() - 1.5)), NULL, NULL, NULL,
               %(first)s + k * interval '1 minute'
        FROM devices_device d CROSS JOIN generate_series(1, %(count)s) AS k
        WHERE {_SCOPES[scope]}
    """, {"version_id": version_id, "model": MODEL, "version": version, "first": first,  # noqa: S608
          "count": count, "latency": latency, "stage": stage})


def judge_timing(args) -> list[tuple[int, int, int, dict[str, float]]]:
    from django.db import connection, transaction

    from models_app.models import ModelVersion
    from rollouts import orchestrator
    from rollouts.health import health_judge, stage_samples
    from rollouts.models import Assignment
    from rollouts.services import distribution_create

    old = ModelVersion.objects.get(model_id=f"{MODEL}-1.0.0")
    bad = ModelVersion.objects.filter(ai_model=old.ai_model).exclude(pk=old.pk).order_by("pk").first()
    rows = []
    for size in args.judge_sizes:
        fleet = size * 10
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=args.windows + 1)
        now = start + timedelta(minutes=args.windows, seconds=30)
        begun = time.perf_counter()
        with connection.cursor() as cursor:
            judge_fleet(cursor, fleet=fleet, windows=args.windows, start=start, old_id=old.pk)
        distribution = distribution_create(version=bad, strategy="canary", config={"percent": 10, "soak": "PT30M"},
                                           target={}, now=start, name=f"judge bench {size}")
        orchestrator.distribution_advance(distribution_id=distribution.pk, now=start)
        stage = distribution.stages.get(index=0)
        Assignment.objects.filter(stage=stage).update(state="active")
        with connection.cursor() as cursor:
            _windows(cursor, scope="stage", stage=stage.pk, version_id=bad.pk, version=bad.version, latency=30.0,
                     first=start, count=args.windows)
            _windows(cursor, scope="others", stage=stage.pk, version_id=old.pk, version="1.0.0", latency=20.0,
                     first=start, count=args.windows)
            cursor.execute("VACUUM ANALYZE devices_metricwindow")
            cursor.execute("VACUUM ANALYZE rollouts_assignment")
            cursor.execute("SELECT count(*) FROM devices_metricwindow")
            window_rows = cursor.fetchone()[0]
        print(f"judge fleet: canary stage of {stage.device_count:,} of {fleet:,} devices, {window_rows:,} windows "
              f"(generated in {time.perf_counter() - begun:.1f} s)", flush=True)
        stage = distribution.stages.get(index=0)
        stage.distribution = distribution
        samples: dict[str, list[float]] = {"stage_samples": [], "health_judge": [], "tick (fails, rolls back)": []}
        verdict = health_judge(stage, now=now)  # warm-up: caches, plans
        for _ in range(args.repeat):
            begun = time.perf_counter()
            new, baseline, _ = stage_samples(stage, now=now)
            samples["stage_samples"].append(time.perf_counter() - begun)
            begun = time.perf_counter()
            verdict = health_judge(stage, now=now)
            samples["health_judge"].append(time.perf_counter() - begun)
            try:
                with transaction.atomic():
                    begun = time.perf_counter()
                    status = orchestrator.distribution_advance(distribution_id=distribution.pk, now=now)
                    samples["tick (fails, rolls back)"].append(time.perf_counter() - begun)
                    raise _Undo(status)
            except _Undo as undo:
                if undo.status != "rolled_back":
                    raise BenchError(f"the tick left the distribution {undo.status}") from None
        assert verdict is not None and verdict.result == "fail", verdict
        assert len(new) == stage.device_count and len(baseline) == fleet - stage.device_count, (len(new),
                                                                                                 len(baseline))
        medians = {step: median(values) for step, values in samples.items()}
        print(f"  stage of {size:,}: " + ", ".join(f"{step} {value * 1000:.0f} ms" for step, value in medians.items())
              + f" (verdict: {verdict.reason})", flush=True)
        rows.append((size, fleet, window_rows, medians))
        if args.explain and size == args.judge_sizes[-1]:
            explain(stage, now)
    return rows


def explain(stage, now: datetime) -> None:
    """EXPLAIN ANALYZE of the judge's two figure queries (new version, baseline), for finding where time goes."""
    from django.db import connection

    from rollouts import health

    queries = {"new": ("a.stage_id = %(stage)s AND a.state = 'active'", "a.version_id", stage.started_at),
               "baseline": ("a.state = 'pending' AND a.previous_version_id IS NOT NULL", "a.previous_version_id",
                            stage.started_at)}
    for name, (assignments, version, since) in queries.items():
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + health._FIGURES_SQL.format(assignments=assignments,
                                                                                      version=version),
                           {"distribution": stage.distribution_id, "since": since, "until": now, "stage": stage.pk})
            print(f"\n{name}:\n" + "\n".join(row[0] for row in cursor.fetchall()))


class _Undo(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


# --- report ----------------------------------------------------------------------------------------------------


def report(args, results: list[dict], ticks: list[float], judged: list) -> None:
    if results:
        report_live(args, results, ticks)
    if judged:
        report_judge(args, judged)


def report_live(args, results: list[dict], ticks: list[float]) -> None:
    print(f"\nRollback bench: {args.devices:,} simulated devices, poll {args.poll_seconds:g} s, canary 10 % "
          f"(+50 % latency), tick {os.environ.get('ROLLOUT_TICK_SECONDS', '5')} s; medians of {len(results)} run(s), "
          f"seconds from the first degraded window reaching the server\n")
    rows = [("enough data to judge (min devices, inferences)", "enough"),
            ("the tick rolling back starts (transition at)", "issued"),
            ("the rollback is committed (seen by polling)", "committed"),
            ("visible: first check-in answer carrying it", "visible"),
            ("visible: half the canary's answers", "visible_median"),
            ("visible: every canary device's answer", "visible_all"),
            ("every canary device back on 1.0.0", "back_all")]
    print(f"  {'step':<44} {'median':>8} {'runs':>24} {'÷ 10 s target':>14}")
    for label, key in rows:
        values = [r[key] for r in results]
        value = median(values)
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"  {label:<44} {value:>7.1f}s {runs:>24} {value / TARGET_SECONDS:>13.2f}×")
    visible = median([r["visible"] for r in results])
    verdict = "meets" if visible <= TARGET_SECONDS else "misses"
    print(f"\n  first degraded window → rollback visible in a check-in answer: {visible:.1f} s, {verdict} the "
          f"{TARGET_SECONDS:.0f} s target (bound {BOUND_SECONDS:.0f} s)")
    if ticks:
        print(f"  ticks with the distribution open: {len(ticks)}, median {median(ticks) * 1000:.0f} ms, "
              f"max {max(ticks) * 1000:.0f} ms")
    after_enough = median([r["visible"] - r["enough"] for r in results])
    print(f"  from the moment the judge had enough data to the first answer: {after_enough:.1f} s (median)")
    print(f"  {OTHER}-1.0.0, every device's second model, untouched by the {len(results)} rollback(s): on all "
          f"{args.devices:,} devices its slot's desired state (version, sequence) unchanged and it still runs\n"
          f"  {OTHER}-1.0.0 (devices_modelslot and the simulator); it kept reporting "
          f"({median([r['other_windows'] for r in results]):,.0f} windows a run, median)")
    interval = median([r["interval"] for r in results])
    print(f"  A device sees the rollback at its next check-in: the whole canary within one check-in interval; each "
          f"device checked in every {interval:.0f} s\n  meanwhile (poll interval {args.poll_seconds:g} s; longer when "
          "the machine cannot answer the whole fleet that often).")
    if interval > 1.25 * args.poll_seconds:
        print(f"  !! the machine could not check the fleet in every {args.poll_seconds:g} s: devices waited in the "
              "simulator's queue, so windows reached the server late and unevenly\n     (the first one can precede the "
              "rest by minutes); use a longer --poll-seconds or fewer --devices for figures of the server alone.")


def report_judge(args, judged: list) -> None:
    if judged:
        print(f"\nJudge query time per stage (medians of {args.repeat}; {args.windows} one-minute windows per device "
              "since the stage started and as many before)\n")
        print(f"  {'stage':>8} {'fleet':>9} {'windows':>11} {'stage_samples':>14} {'health_judge':>13} "
              f"{'whole tick + rollback':>22}")
        for size, fleet, window_rows, medians in judged:
            print(f"  {size:>8,} {fleet:>9,} {window_rows:>11,} {medians['stage_samples'] * 1000:>11.0f} ms "
                  f"{medians['health_judge'] * 1000:>10.0f} ms {medians['tick (fails, rolls back)'] * 1000:>19.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="simulated devices (default 10,000)")
    parser.add_argument("--poll-seconds", type=float, default=60.0,
                        help="the devices' poll interval (default 60, the server's default)")
    parser.add_argument("--runs", type=int, default=3, help="canaries rolled back, one after another (default 3)")
    parser.add_argument("--concurrency", type=int, default=200, help="simulator requests in flight (default 200)")
    parser.add_argument("--min-inferences", type=int, default=None,
                        help="the canaries' min_inferences success criterion (default: the distribution default)")
    parser.add_argument("--judge-sizes", default="1000,10000",
                        help="canary stage sizes the judge is timed on (default 1000,10000; 0 skips)")
    parser.add_argument("--windows", type=int, default=10, help="one-minute windows per device for the judge timing")
    parser.add_argument("--repeat", type=int, default=5, help="judge timing repeats (median; default 5)")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN ANALYZE of the judge's queries on the largest stage")
    parser.add_argument("--skip-live", action="store_true", help="only time the judge")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) for inspection")
    # 40 devices: a canary of 4, over the judge's min_devices (3).
    args = parse_args(parser, smoke={"devices": 40, "poll_seconds": 2.0, "runs": 1, "concurrency": 20,
                                     "min_inferences": 100, "judge_sizes": "20", "windows": 2, "repeat": 1})
    args.judge_sizes = [int(s) for s in args.judge_sizes.split(",") if s.strip() and int(s)]
    if not port_open("127.0.0.1", 5432):
        print("note: no PostgreSQL on 127.0.0.1:5432, an embedded one is started")
    env = {"LOG_LEVEL": "WARNING", "ROLLOUT_JUDGE": "rollouts.health.health_judge",
           "DEVICE_POLL_INTERVAL_SECONDS": str(round(args.poll_seconds)),
           # The worker validates the bench's versions on a busy machine: timing gates would judge its load.
           "GATE_MAX_LATENCY_P99_MS": "5000", "GATE_MIN_THROUGHPUT_IPS": "1", "GATE_MAX_LATENCY_INCREASE": "100",
           "VALIDATION_BENCHMARK_RUNS": "20"}
    if args.smoke:  # seconds, not minutes, to the rollback
        env.update(ROLLOUT_TICK_SECONDS="1", METRIC_FLUSH_SECONDS="1")
    for name in ("ROLLOUT_TICK_SECONDS", "HEARTBEAT_FLUSH_SECONDS"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    with bench_stack(prefix="rollback-", database=BENCH_DB, redis_db=REDIS_DB, bucket=BUCKET, keep=args.keep,
                     env=env, smoke=args.smoke) as stack:
        stack.env["MANIFEST_SIGNING_KEY_PATH"] = str(stack.scratch / "manifest-signing.key")
        os.environ.update(stack.env)
        os.environ["LOG_LEVEL"] = "ERROR"  # this process: no alert per rolled-back test distribution
        import django

        django.setup()
        from django.db import connection

        results, ticks = [], []
        if not args.skip_live:
            results, ticks = live(stack, args)
        else:
            from models_app.models import ModelVersion

            # Nobody validates them without the worker: marked passed, they are only rows to plan with here.
            for minor in (0, 1):
                ModelVersion.objects.filter(pk=upload_version(stack.scratch, minor).pk).update(status="passed")
        judged = judge_timing(args) if args.judge_sizes else []
        connection.close()
        if results or judged:
            report(args, results, ticks, judged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
