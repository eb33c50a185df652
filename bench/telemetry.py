"""Telemetry aggregates for a 100,000-device fleet: rollup time and fleet-wide query latency from SQL.

Fills a fresh database with N devices over 4 regions and 3 device types, one hour of one-minute
metric windows for a share of them (all N report in the last window), rolls them up, and times the
reads the judge and the console make: one version over the last 5 minutes, by region, and a 1-hour
time series in 1-minute slices. Prints medians of --repeat runs.

    python bench/telemetry.py [--devices 100000] [--minutes 60] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stack import bench_database, database_url, drop_database, parse_args, redis_url  # noqa: E402

DATABASE = "hotswap_bench_telemetry"
REDIS_DB = 6


def timed(function, repeat: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=60, help="minutes of history")
    parser.add_argument("--history-share", type=float, default=0.1,
                        help="share of devices with a full history (all report in the last minute)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, smoke={"devices": 100, "minutes": 5, "repeat": 1})

    scratch = Path(tempfile.mkdtemp(prefix="hotswap-bench-telemetry-"))
    own_database = not os.environ.get("DATABASE_URL")  # a database given in DATABASE_URL is never dropped
    if own_database:
        os.environ["DATABASE_URL"] = database_url(scratch, bench_database(DATABASE, smoke=args.smoke))
    if not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = redis_url(scratch, REDIS_DB, smoke=args.smoke)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hotswap.settings.base")
    os.environ.setdefault("HOTSWAP_VAR_DIR", str(scratch))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from devices.services.telemetry import metric_rollup
    from devices.telemetry_selectors import version_metrics
    from models_app.models import AIModel, ModelVersion

    call_command("migrate", verbosity=0)
    model = AIModel.objects.create(name="bench", framework="onnx")
    version = ModelVersion.objects.create(
        ai_model=model, version="1.0.0", model_id="bench-1.0.0", major=1, minor=0, patch=0, is_release=True,
        storage_key="bench", sha256="0" * 64, size_bytes=1, detected_format="onnx",
    )
    now = timezone.now().replace(second=0, microsecond=0)
    history_devices = int(args.devices * args.history_share)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO devices_device (device_id, name, device_type, region, tags, gpu, status, registered_at)
            SELECT 'dev-' || i, '', (ARRAY['camera','gateway','kiosk'])[1 + i %% 3],
                   (ARRAY['eu-west','us-east','ap-south','sa-east'])[1 + i %% 4], '{}', '', 'active', now()
            FROM generate_series(1, %s) AS i
        """, [args.devices])
        # The last minute: every device reports; before that, the history share does.
        cursor.execute("""
            INSERT INTO devices_metricwindow (device_id, version_id, model_name, model_version, window_start,
                window_end, inference_count, error_count, latency_p50_ms, latency_p95_ms, latency_p99_ms,
                latency_histogram, received_at)
            SELECT d.id, %(version)s, 'bench', '1.0.0', %(now)s - m * interval '1 minute' - interval '1 minute',
                   %(now)s - m * interval '1 minute' - interval '1 second', 600, (d.id %% 7), 4 + (d.id %% 5),
                   8 + (d.id %% 7), 12 + (d.id %% 11), ARRAY[0,0,100,300,150,50,0,0,0,0,0,0,0], now()
            FROM devices_device d CROSS JOIN generate_series(0, %(minutes)s - 1) AS m
            WHERE m = 0 OR d.id <= %(history)s
        """, {"version": version.pk, "now": now, "minutes": args.minutes, "history": history_devices})
        cursor.execute("SELECT count(*) FROM devices_metricwindow")
        windows = cursor.fetchone()[0]
        cursor.execute("ANALYZE")
    load_s = time.perf_counter() - started
    buckets = [now - timedelta(minutes=m + 1) for m in range(args.minutes)]
    started = time.perf_counter()
    for i in range(0, len(buckets), 10):
        metric_rollup(buckets=buckets[i:i + 10])
    rollup_s = time.perf_counter() - started
    last_minute_ms, _ = timed(lambda: metric_rollup(buckets=[now - timedelta(minutes=1)]), args.repeat)

    since = now - timedelta(minutes=5)
    overall_ms, overall = timed(lambda: version_metrics(version_ids=[version.pk], since=since, until=now),
                                args.repeat)
    region_ms, _ = timed(lambda: version_metrics(version_ids=[version.pk], since=since, until=now,
                                                 group_by="region"), args.repeat)
    series_ms, series = timed(lambda: version_metrics(version_ids=[version.pk], since=now - timedelta(hours=1),
                                                      until=now, interval_seconds=60), args.repeat)

    print(f"\nTelemetry bench: {args.devices:,} devices, {windows:,} metric windows "
          f"(loaded in {load_s:.1f} s), medians of {args.repeat}\n")
    print(f"  {'measure':<52} {'value':>10}   target")
    print(f"  {'roll up one minute of the whole fleet':<52} {last_minute_ms:>7.0f} ms")
    print(f"  {f'roll up {args.minutes} minutes (initial backfill)':<52} {rollup_s * 1000:>7.0f} ms")
    print(f"  {'version aggregate, last 5 min':<52} {overall_ms:>7.1f} ms   < 1000 ms "
          f"({overall[0]['inference_count']:,} inferences)")
    print(f"  {'version aggregate by region, last 5 min':<52} {region_ms:>7.1f} ms   < 1000 ms")
    print(f"  {'1-hour time series in 1-minute slices':<52} {series_ms:>7.1f} ms   < 1000 ms ({len(series)} points)")
    connection.close()
    if own_database:
        drop_database(os.environ["DATABASE_URL"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
