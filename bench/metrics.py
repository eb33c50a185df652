"""/metrics on a large installation: how long the domain metrics take to aggregate from PostgreSQL.

Fills a fresh database with N devices over 4 regions and 3 device types (a tenth offline), model
versions with validation reports, finished distributions with their transitions, install reports
(downloading, installed, active with a duration) for --rollouts rollouts of the whole fleet, and
--days of per-minute telemetry rollups per version, region and device type. Times the uncached
aggregation, a whole GET /metrics without and with the shared cache. Prints medians of --repeat runs.

    python bench/metrics.py [--devices 100000] [--rollouts 5] [--days 7] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stack import bench_database, database_url, drop_database, parse_args, redis_url  # noqa: E402

DATABASE = "hotswap_bench_metrics"
REDIS_DB = 11  # emptied at the start
VERSIONS = 6


def timed(function, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def load(cursor, *, devices: int, rollouts: int, days: int) -> None:
    cursor.execute("""
        INSERT INTO models_app_aimodel (name, description, framework, task, tags, quality_gates, accuracy_metric,
                                        input_profiles, output_tolerances, created_at, updated_at)
        VALUES ('bench', '', 'onnx', 'other', '{}', '{}', 'top1', '[]', '{}', now(), now())
    """)
    cursor.execute("""
        INSERT INTO models_app_modelversion (ai_model_id, version, model_id, major, minor, patch, prerelease,
            is_release, storage_key, sha256, size_bytes, detected_format, format_details, original_filename,
            input_schema, output_schema, target_device_type, min_memory_mb, accelerator, status, uploaded_at,
            updated_at, approval_reason, traceparent, scrub_error, input_profiles, sha256_verified)
        SELECT (SELECT id FROM models_app_aimodel), '1.' || v || '.0', 'bench-1.' || v || '.0', 1, v, 0, '', true,
               'bench/' || v, repeat('0', 64), 1, 'onnx', '{}', '', '[]', '[]', '', NULL, 'none', 'passed', now(),
               now(), '', '', '', '[]', true
        FROM generate_series(0, %s - 1) AS v
    """, [VERSIONS])
    cursor.execute("""
        INSERT INTO models_app_validationreport (version_id, status, requested_at, started_at, finished_at, attempts,
            gate_overrides, gates_applied, summary, result)
        SELECT v.id, 'passed', now(), now() - interval '20 seconds', now(), 1, '{}', '{}', '', '{}'
        FROM models_app_modelversion v CROSS JOIN generate_series(1, 5)
    """)
    cursor.execute("""
        INSERT INTO devices_device (device_id, name, device_type, region, tags, gpu, status, registered_at)
        SELECT 'dev-' || i, '', (ARRAY['camera','gateway','kiosk'])[1 + i %% 3],
               (ARRAY['eu-west','us-east','ap-south','sa-east'])[1 + i %% 4], '{}', '',
               CASE WHEN i %% 10 = 0 THEN 'offline' ELSE 'active' END, now()
        FROM generate_series(1, %s) AS i
    """, [devices])
    # Every device runs the newest version (its one model slot).
    cursor.execute("""
        INSERT INTO devices_modelslot (device_id, ai_model_id, running_version_id, reported_version, reported_sha256,
            reported_at, remove, rollback, sequence, source, reason, traceparent, refused_reason)
        SELECT d.id, v.ai_model_id, v.id, v.version, v.sha256, now(), false, false, 0, '', '', '', ''
        FROM devices_device d CROSS JOIN (SELECT * FROM models_app_modelversion ORDER BY id DESC LIMIT 1) v
    """)
    # Each rollout: a distribution, its transitions, and three install reports per device.
    cursor.execute("""
        INSERT INTO rollouts_distribution (name, ai_model_id, version_id, strategy, strategy_reason, config, target,
            success_criteria, rollback_policy, install_timeout_seconds, max_attempts, is_rollback, failure_threshold,
            status, status_reason, scheduled_at, device_count, traceparent, created_at, started_at, finished_at,
            updated_at)
        SELECT 'rollout ' || r, v.ai_model_id, v.id, (ARRAY['canary','progressive','regional'])[1 + r %% 3], '', '{}',
               '{}', '{}', 'automatic', 900, 3, false, 0.1, 'completed', '', now(), %(devices)s, '',
               now() - interval '3 hours', now() - interval '3 hours', now() - interval '1 hour', now()
        FROM generate_series(1, %(rollouts)s) AS r
        JOIN models_app_modelversion v ON v.minor = r %% %(versions)s
    """, {"devices": devices, "rollouts": rollouts, "versions": VERSIONS})
    cursor.execute("""
        INSERT INTO rollouts_transition (distribution_id, from_status, to_status, actor_label, reason, at)
        SELECT d.id, t.f, t.t, 'orchestrator', '', now()
        FROM rollouts_distribution d
        CROSS JOIN (VALUES ('', 'scheduled'), ('scheduled', 'running'), ('running', 'completed')) AS t(f, t)
    """)
    cursor.execute("""
        INSERT INTO devices_installreport (device_id, version_id, model_name, model_version, status, error,
            sequence, duration_ms, reported_at, received_at, traceparent)
        SELECT dev.id, d.version_id, 'bench', '1.0.0', s.status, '', 1,
               CASE WHEN s.status = 'downloading' THEN NULL ELSE 500 + (dev.id * 37 % 9000) END,
               now() - interval '1 hour', now() - interval '1 hour', ''
        FROM rollouts_distribution d CROSS JOIN devices_device dev
        CROSS JOIN (VALUES ('downloading'), ('installed'), ('active')) AS s(status)
    """)
    cursor.execute("""
        INSERT INTO devices_metricrollup (version_id, region, device_type, bucket_start, window_count, device_count,
            inference_count, error_count, latency_p50_weighted, latency_p95_weighted, latency_p99_weighted,
            latency_p99_max, latency_histogram, accuracy_weighted, labelled_count)
        SELECT v.id, r.region, t.type, date_trunc('minute', now()) - m * interval '1 minute', 100, 100, 60000, 40,
               240000, 480000, 720000, 12, ARRAY[0,0,10000,30000,15000,5000,0,0,0,0,0,0,0], 0, 0
        FROM models_app_modelversion v
        CROSS JOIN (VALUES ('eu-west'), ('us-east'), ('ap-south'), ('sa-east')) AS r(region)
        CROSS JOIN (VALUES ('camera'), ('gateway'), ('kiosk')) AS t(type)
        CROSS JOIN generate_series(0, %s - 1) AS m
    """, [days * 1440 // VERSIONS])  # the versions share the history: one at a time runs on the fleet
    cursor.execute("ANALYZE")


def count(cursor, table: str) -> int:
    cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
    return cursor.fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rollouts", type=int, default=5, help="rollouts of the whole fleet in the history")
    parser.add_argument("--days", type=int, default=7, help="days of per-minute telemetry rollups")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (to explain queries afterwards)")
    args = parse_args(parser, smoke={"devices": 100, "rollouts": 1, "days": 1, "repeat": 1})

    scratch = Path(tempfile.mkdtemp(prefix="hotswap-bench-metrics-"))
    os.environ["DATABASE_URL"] = database_url(scratch, bench_database(DATABASE, smoke=args.smoke))
    os.environ["REDIS_URL"] = redis_url(scratch, REDIS_DB, smoke=args.smoke)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hotswap.settings.base")
    os.environ.setdefault("HOTSWAP_VAR_DIR", str(scratch))
    import django

    django.setup()
    from django.conf import settings
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from prometheus_client import generate_latest

    from hotswap.observability import metrics
    from hotswap.observability.metrics import CACHE_KEY, DomainCollector

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        load(cursor, devices=args.devices, rollouts=args.rollouts, days=args.days)
        sizes = {table: count(cursor, table) for table in (
            "devices_device", "devices_installreport", "devices_metricrollup", "rollouts_transition")}
    load_s = time.perf_counter() - started

    cold_ms = timed(lambda: generate_latest(DomainCollector()), 1)  # aggregates and keeps the settled rows
    aggregate_ms = timed(lambda: generate_latest(DomainCollector()), args.repeat)
    queries = {}
    with connection.cursor() as cursor:
        for name in ("VERSIONS", "VALIDATIONS", "DISTRIBUTIONS", "FINISHED", "DEVICES", "INSTALLS",
                     "INFERENCE"):
            sql, params = getattr(metrics, f"_{name}_SQL"), None
            if name == "INSTALLS":  # what a scrape reads: the rows since the settled watermark
                params = {"low": cache.get(metrics._Settled("installs").key)[0], "high": 2**63 - 1}
            elif name == "INFERENCE":
                cursor.execute("SELECT array_agg(id) FROM models_app_modelversion")
                params = {"versions": cursor.fetchone()[0], "high": datetime.max.replace(tzinfo=UTC),
                          "low": cache.get(metrics._Settled("inference").key)[0]}
            queries[name.lower()] = timed(lambda sql=sql, params=params: cursor.execute(sql, params)
                                          or cursor.fetchall(), args.repeat)
    settings.ALLOWED_HOSTS = ["*"]
    client = Client()
    settings.METRICS_CACHE_SECONDS = 0
    uncached_ms = timed(lambda: client.get("/metrics"), args.repeat)
    settings.METRICS_CACHE_SECONDS = 60
    client.get("/metrics")
    cached_ms = timed(lambda: client.get("/metrics"), args.repeat)
    body = client.get("/metrics").content
    cache.delete_many([CACHE_KEY, metrics._Settled("installs").key, metrics._Settled("inference").key])

    print(f"\n/metrics bench: {', '.join(f'{n:,} {t}' for t, n in sizes.items())} "
          f"(loaded in {load_s:.0f} s), medians of {args.repeat}\n")
    print(f"  {'measure':<48} {'value':>10}")
    print(f"  {'first aggregation (empty cache: every row)':<48} {cold_ms:>7.0f} ms")
    print(f"  {'domain aggregation (SQL + text), uncached':<48} {aggregate_ms:>7.0f} ms")
    for name, ms in queries.items():
        print(f"  {f'  of which the {name} query':<48} {ms:>7.1f} ms")
    print(f"  {'GET /metrics, cache off':<48} {uncached_ms:>7.0f} ms")
    print(f"  {'GET /metrics, from the shared cache':<48} {cached_ms:>7.1f} ms")
    print(f"  {'response size':<48} {len(body) / 1024:>7.0f} KiB")
    connection.close()
    if not args.keep:
        drop_database(os.environ["DATABASE_URL"])
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
