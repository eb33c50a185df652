"""Telemetry: the flush of buffered metric windows, rollups (raw windows → per-minute sums by version, region
and device type) and retention."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models.functions import TruncMinute
from django.utils import timezone

from devices import heartbeats
from devices.models import MetricWindow, MetricWindowBatch
from devices.services.checkin import reports_insert

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


def metric_windows_flush() -> int:
    """Writes the metric windows check-ins buffered in Redis to PostgreSQL; returns how many were stored.

    The buffer is claimed as a batch first (heartbeats.buffer_batches), so check-ins arriving meanwhile
    fill a fresh one. Each chunk of METRIC_FLUSH_CHUNK check-ins is one statement whose transaction
    also records a receipt (MetricWindowBatch, unique per chunk), and the batch is deleted only after
    its last chunk: a flush that dies halfway leaves it for the next flush, which skips the chunks
    already receipted. So every window is stored once, even with two flushes at the same time.
    """
    client = heartbeats.redis_client()
    _fold_legacy_rejected(client)
    stored = 0
    chunk = settings.METRIC_FLUSH_CHUNK
    for batch in heartbeats.buffer_batches(heartbeats.metric_buffer_key()):
        batch_id = batch.decode().rpartition(":")[2]
        for start in range(0, client.llen(batch), chunk):
            stored += _flush_chunk(f"{batch_id}:{start}", client.lrange(batch, start, start + chunk - 1))
        client.delete(batch)
    return stored


def _fold_legacy_rejected(client) -> None:
    # Before set-aside lists, refused windows went to a list with no cap and no expiry: its newest entries
    # join the set-aside list once (capped, expiring, counted), and it goes.
    legacy = f"{heartbeats.metric_buffer_key()}:rejected"
    if client.exists(legacy):
        heartbeats.set_aside(SET_ASIDE_KIND, client.lrange(legacy, -heartbeats.SET_ASIDE_MAX, -1),
                             error=RuntimeError("refused by an earlier version of the flush"))
        client.delete(legacy)


def metric_buffer_depth() -> tuple[int, int]:
    """(check-ins whose windows wait for the flush, windows the database refused, set aside)."""
    client = heartbeats.redis_client()
    key = heartbeats.metric_buffer_key()
    waiting = client.llen(key) + sum(client.llen(batch) for batch in heartbeats.buffer_batches(key, claim=False))
    return waiting, client.llen(heartbeats.set_aside_key(SET_ASIDE_KIND))


SET_ASIDE_KIND = "metric-windows"


def _flush_chunk(receipt: str, arrays: list[bytes]) -> int:
    # Each entry is one check-in's JSON array; joined, they are one array. Committed synchronously: the
    # windows leave Redis right after.
    windows = b"[" + b",".join(entry[1:-1] for entry in arrays if len(entry) > 2) + b"]"
    try:
        with transaction.atomic():
            _, created = MetricWindowBatch.objects.get_or_create(key=receipt, defaults={"checkins": len(arrays)})
            if not created:
                return 0  # stored by an earlier flush that died before deleting the list
            stored = reports_insert(device_pk=None, windows=windows.decode(), synchronous=True)
            MetricWindowBatch.objects.filter(key=receipt).update(windows=stored)
            return stored
    except heartbeats.REFUSED as exc:
        # Validated windows always fit; should one not (buffered before a rule changed, a bug), it must not
        # hold up the rest: each half is tried alone (its own receipt), down to the single windows refused,
        # which are set aside. One bad window among n costs about 2·log2(n) statements, and only then.
        return _flush_halves(receipt, arrays, exc)


def _flush_halves(receipt: str, arrays: list[bytes], exc: BaseException) -> int:
    if len(arrays) == 1:
        arrays = _one_array_per_window(arrays[0])
        if len(arrays) == 1:
            heartbeats.set_aside(SET_ASIDE_KIND, arrays, error=exc)
            return 0
    middle = len(arrays) // 2
    return _flush_chunk(f"{receipt}a", arrays[:middle]) + _flush_chunk(f"{receipt}b", arrays[middle:])


def _one_array_per_window(entry: bytes) -> list[bytes]:
    """A check-in's windows as one JSON array each (the entry itself when it holds one, or is not an array)."""
    try:
        windows = json.loads(entry)
    except ValueError:
        return [entry]
    if not isinstance(windows, list) or len(windows) < 2:
        return [entry]
    return [json.dumps([window], separators=(",", ":")).encode() for window in windows]


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
    MetricWindowBatch.objects.filter(flushed_at__lt=cutoff).delete()
    return deleted
