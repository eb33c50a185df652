"""Fleet-wide telemetry reads from the per-minute rollup: per version, per group, per time window."""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from devices.models import LATENCY_BUCKETS_MS

GROUPS = {"region": "region", "device_type": "device_type", "none": "''"}


def histogram_percentile(counts: list[int], quantile: float) -> float | None:
    """The upper bound (ms) of the bucket holding the quantile; the open last bucket reports its lower bound."""
    total = sum(counts)
    if not total:
        return None
    target, running = quantile * total, 0
    for index, count in enumerate(counts):
        running += count
        if running >= target:
            return float(LATENCY_BUCKETS_MS[min(index, len(LATENCY_BUCKETS_MS) - 1)])
    return float(LATENCY_BUCKETS_MS[-1])


def version_metrics(*, version_ids: list[int], since: datetime, until: datetime, group_by: str = "none",
                    interval_seconds: int | None = None) -> list[dict]:
    """Aggregates per version (and group, and time slice when interval_seconds is given).

    Latency percentiles are inference-weighted means of what devices reported; `histogram_p99_ms`
    is the exact bucket of the merged histogram when devices send histograms.
    """
    group = GROUPS[group_by]
    slice_expr = (
        "to_timestamp(floor(extract(epoch FROM bucket_start) / %(step)s) * %(step)s)" if interval_seconds
        else "NULL::timestamptz"
    )
    sql = f"""
        SELECT version_id, {group} AS grp, {slice_expr} AS slice,
               sum(inference_count)::bigint, sum(error_count)::bigint, sum(window_count)::bigint,
               sum(latency_p50_weighted), sum(latency_p95_weighted), sum(latency_p99_weighted), max(latency_p99_max),
               sum(accuracy_weighted), sum(labelled_count)::bigint
        FROM devices_metricrollup
        WHERE version_id = ANY(%(versions)s) AND bucket_start >= %(since)s AND bucket_start < %(until)s
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    """  # noqa: S608 - group and slice come from fixed strings above
    histogram_sql = f"""
        SELECT version_id, {group}, {slice_expr}, h.idx, sum(h.count)::bigint
        FROM devices_metricrollup CROSS JOIN LATERAL unnest(latency_histogram) WITH ORDINALITY AS h(count, idx)
        WHERE version_id = ANY(%(versions)s) AND bucket_start >= %(since)s AND bucket_start < %(until)s
        GROUP BY 1, 2, 3, 4
    """  # noqa: S608
    params = {"versions": version_ids, "since": since, "until": until, "step": interval_seconds}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        cursor.execute(histogram_sql, params)
        histograms: dict[tuple, list[int]] = {}
        for version_id, grp, slice_start, idx, total in cursor.fetchall():
            counts = histograms.setdefault((version_id, grp, slice_start), [0] * (len(LATENCY_BUCKETS_MS) + 1))
            counts[idx - 1] = int(total)
    result = []
    for version_id, grp, slice_start, count, errors, windows, p50w, p95w, p99w, p99max, accw, labelled in rows:
        histogram = histograms.get((version_id, grp, slice_start))
        result.append({
            "version_id": version_id, "group": grp or None, "slice_start": slice_start,
            "inference_count": int(count), "error_count": int(errors), "windows": int(windows),
            "error_rate": errors / count if count else None,
            "latency_p50_ms": p50w / count if count else None, "latency_p95_ms": p95w / count if count else None,
            "latency_p99_ms": p99w / count if count else None, "latency_p99_max_ms": p99max,
            "histogram_p99_ms": histogram_percentile(histogram, 0.99) if histogram else None,
            "accuracy": accw / labelled if labelled else None, "labelled_count": int(labelled),
        })
    return result
