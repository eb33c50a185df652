"""Telemetry rollups and retention: raw metric windows → per-minute sums by version, region and device type."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models.functions import TruncMinute
from django.utils import timezone

from devices.models import MetricWindow

WATERMARK_KEY = "devices:metric-rollup:watermark"
# Without a watermark (first run, Redis flushed) look this far back for windows to roll up.
DEFAULT_LOOKBACK = timedelta(hours=1)

_ROLLUP_SQL = """
WITH w AS (
    SELECT w.*, d.region, d.device_type, date_trunc('minute', w.window_end) AS bucket
    FROM devices_metricwindow w JOIN devices_device d ON d.id = w.device_id
    WHERE w.version_id IS NOT NULL AND w.window_end >= %(low)s AND w.window_end < %(high)s
      AND date_trunc('minute', w.window_end) = ANY(%(buckets)s)
), histogram AS (
    SELECT version_id, region, device_type, bucket, array_agg(total ORDER BY idx) AS counts
    FROM (
        SELECT version_id, region, device_type, bucket, h.idx, sum(h.count) AS total
        FROM w CROSS JOIN LATERAL unnest(w.latency_histogram) WITH ORDINALITY AS h(count, idx)
        GROUP BY 1, 2, 3, 4, 5
    ) per_bucket
    GROUP BY 1, 2, 3, 4
)
INSERT INTO devices_metricrollup (
    version_id, region, device_type, bucket_start, window_count, device_count, inference_count, error_count,
    latency_p50_weighted, latency_p95_weighted, latency_p99_weighted, latency_p99_max, latency_histogram,
    accuracy_weighted, labelled_count
)
SELECT w.version_id, w.region, w.device_type, w.bucket, count(*), count(DISTINCT w.device_id),
       sum(w.inference_count), sum(w.error_count),
       sum(w.latency_p50_ms * w.inference_count), sum(w.latency_p95_ms * w.inference_count),
       sum(w.latency_p99_ms * w.inference_count), max(w.latency_p99_ms), max(histogram.counts),
       sum(coalesce(w.accuracy, 0) * coalesce(w.labelled_count, 0)), sum(coalesce(w.labelled_count, 0))
FROM w LEFT JOIN histogram USING (version_id, region, device_type, bucket)
GROUP BY w.version_id, w.region, w.device_type, w.bucket
"""


def metric_rollup(*, buckets: list[datetime]) -> int:
    """Recomputes the rollup rows of the given minute buckets from the raw windows (idempotent)."""
    if not buckets:
        return 0
    low, high = min(buckets), max(buckets) + timedelta(minutes=1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM devices_metricrollup WHERE bucket_start = ANY(%s)", [buckets])
        cursor.execute(_ROLLUP_SQL, {"low": low, "high": high, "buckets": buckets})
        return cursor.rowcount


def metric_rollup_recent(*, now: datetime | None = None) -> int:
    """Rolls up every minute bucket that received windows since the last run (late windows included)."""
    now = now or timezone.now()
    since = cache.get(WATERMARK_KEY) or now - DEFAULT_LOOKBACK
    # Re-read a little before the watermark: a window committed late in the last run may carry an older stamp.
    buckets = list(
        MetricWindow.objects.filter(received_at__gte=since - timedelta(seconds=30), received_at__lt=now)
        .values_list(TruncMinute("window_end"), flat=True).distinct()
    )
    rows = sum(metric_rollup(buckets=buckets[i:i + 500]) for i in range(0, len(buckets), 500))
    cache.set(WATERMARK_KEY, now, timeout=None)
    return rows


def metric_windows_prune(*, now: datetime | None = None) -> int:
    """Deletes raw windows older than METRIC_RETENTION_DAYS (rollups are kept)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.METRIC_RETENTION_DAYS)
    deleted, _ = MetricWindow.objects.filter(window_end__lt=cutoff).delete()
    return deleted
