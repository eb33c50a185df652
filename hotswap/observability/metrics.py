"""Prometheus metrics: django-prometheus's HTTP and database metrics plus HotSwap's domain metrics.

Why the domain metrics are aggregated from PostgreSQL at scrape time: the events behind them
happen in every gunicorn worker, in Celery workers (possibly on other hosts) and on the devices
(install reports, metric windows), and the database already records each of them: version rows,
validation reports, distribution transitions, install reports with their durations, per-minute
telemetry rollups. One collector that aggregates those rows in SQL serves the same truth whichever
process answers the scrape, needs no directory shared across hosts, survives restarts, and adds
nothing to the hot paths. The result is cached in Redis for METRICS_CACHE_SECONDS, so several
workers and scrapers share one computation. The tables that grow with history (install reports,
telemetry rollups) are aggregated incrementally: the totals of their settled rows are kept in Redis
(`_Settled`), so a scrape reads only newer rows. Counters count append-only rows; the one exception,
deleting a model version (possible only before any distribution shipped it), lowers
hotswap_models_uploaded_total, which Prometheus reads as a counter reset.

What the database does not record, the upload duration a client sees and django-prometheus's own
request metrics, is measured in-process; with several gunicorn workers that needs prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR: an empty directory at each start, which runstack
prepares), read by `exposition()` whenever it is set.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest, multiprocess
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from devices.models import LATENCY_BUCKETS_MS

logger = logging.getLogger(__name__)

CACHE_KEY = "observability:domain-metrics"
# A scrape must never hold the database for long, whatever the fleet's history.
STATEMENT_TIMEOUT_MS = 10_000

VALIDATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
DISTRIBUTION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 21600, 86400, 259200)
# The spec: model swap p99 5 s, end to end 15 s.
SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)
UPLOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
INFERENCE_BUCKETS = tuple(ms / 1000 for ms in LATENCY_BUCKETS_MS)

UPLOAD_SECONDS = Histogram(
    "hotswap_model_upload_duration_seconds",
    "Time to receive, hash and store an upload (POST /api/v1/models), by outcome: created, existing, failed.",
    ["outcome"], buckets=UPLOAD_BUCKETS,
)
# Check-ins skip django-prometheus's per-view metrics (hotswap/handlers.py); these count them instead.
CHECKINS = PrometheusCounter(
    "hotswap_device_checkins_total",
    "Device check-ins answered, by HTTP status (304: nothing changed for the device).",
    ["status"],
)
CHECKIN_SECONDS = Histogram(
    "hotswap_device_checkin_duration_seconds",
    "Time the server spent on a device check-in, from its first middleware to the answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# Answers that are not upload attempts: the request never reached the artifact.
_NOT_ATTEMPTS = {401, 403, 405, 429}


def request_observe(request, response, seconds: float) -> None:
    """Records the in-process domain timings of a finished request: uploads and check-ins."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return
    if match.url_name == "device-checkin":
        CHECKINS.labels(str(response.status_code)).inc()
        CHECKIN_SECONDS.observe(seconds)
        return
    if match.url_name != "model-collection" or request.method != "POST":
        return
    status = response.status_code
    outcome = {202: "created", 200: "existing"}.get(status)
    if outcome is None and status >= 400 and status not in _NOT_ATTEMPTS:
        outcome = "failed"
    if outcome:
        UPLOAD_SECONDS.labels(outcome).observe(seconds)


def _buckets_sql(expr: str, bounds: Iterable[float], *, scale: float = 1.0) -> str:
    # Cumulative bucket counts in one pass; the bounds are this module's constants, never input.
    return ", ".join(f"count(*) FILTER (WHERE {expr} <= {float(b) * scale!r})" for b in bounds)


_VERSIONS_SQL = """
    SELECT v.id, m.name, v.version, v.status
    FROM models_app_modelversion v JOIN models_app_aimodel m ON m.id = v.ai_model_id
"""
_VALIDATIONS_SQL = f"""
    SELECT status, count(*), coalesce(sum(s), 0), {_buckets_sql("s", VALIDATION_BUCKETS)}
    FROM (SELECT status, greatest(extract(epoch FROM finished_at - started_at), 0) AS s
          FROM models_app_validationreport WHERE finished_at IS NOT NULL AND started_at IS NOT NULL) r
    GROUP BY status
"""  # noqa: S608
_DISTRIBUTIONS_SQL = "SELECT strategy, status, count(*) FROM rollouts_distribution GROUP BY 1, 2"
# Transitions are the append-only audit trail: a distribution completed and later rolled back counts in both.
_FINISHED_SQL = f"""
    SELECT strategy, to_status, count(*), coalesce(sum(s), 0), {_buckets_sql("s", DISTRIBUTION_BUCKETS)}
    FROM (SELECT d.strategy, t.to_status,
                 greatest(extract(epoch FROM t.at - coalesce(d.started_at, d.created_at)), 0) AS s
          FROM rollouts_transition t JOIN rollouts_distribution d ON d.id = t.distribution_id
          WHERE t.stage_id IS NULL AND t.to_status IN ('completed', 'rolled_back', 'aborted')) f
    GROUP BY 1, 2
"""  # noqa: S608
# One pass over the fleet and one over its model slots; the groups are few (regions x statuses, and versions).
# The slots' rows come as status 'running' (no device has it): online devices running each version.
_DEVICES_SQL = """
    SELECT region, status, NULL::bigint, count(*) FROM devices_device GROUP BY 1, 2
    UNION ALL
    SELECT NULL, 'running', s.running_version_id, count(*)
    FROM devices_modelslot s JOIN devices_device d ON d.id = s.device_id
    WHERE d.status = 'active' AND s.running_version_id IS NOT NULL
    GROUP BY 3
"""
# An `active` report with duration 0 means "already running it" (agent.py): no update, no swap.
# Install reports are append-only: ids in (low, high] are aggregated once and kept (see _Settled).
_INSTALLS_SQL = f"""
    SELECT version_id, count(*) FILTER (WHERE duration_ms IS NULL OR duration_ms > 0),
           count(*) FILTER (WHERE duration_ms > 0),
           coalesce(sum(duration_ms) FILTER (WHERE duration_ms > 0), 0) / 1000.0,
           {_buckets_sql("duration_ms", SWAP_BUCKETS, scale=1000)}
    FROM devices_installreport
    WHERE status = 'active' AND version_id IS NOT NULL AND id > %(low)s AND id <= %(high)s
    GROUP BY version_id
"""  # noqa: S608
# The last report id received before `cut`: later ones may still have uncommitted neighbours with lower ids.
_INSTALLS_SETTLED_SQL = """
    SELECT coalesce(max(id), %(low)s), (SELECT coalesce(max(id), 0) FROM devices_installreport)
    FROM devices_installreport WHERE id > %(low)s AND received_at < %(cut)s
"""
# Rollups keep per-minute sums (recomputed while late windows arrive); summing each histogram slot is
# one pass with no unnest, on the (version, bucket_start) index.
_INFERENCE_SQL = f"""
    SELECT version_id, sum(inference_count), sum(error_count),
           coalesce(sum(latency_p50_weighted) FILTER (WHERE latency_histogram IS NOT NULL), 0) / 1000.0,
           {", ".join(f"coalesce(sum(latency_histogram[{i}]), 0)" for i in range(1, len(LATENCY_BUCKETS_MS) + 2))}
    FROM devices_metricrollup
    WHERE version_id = ANY(%(versions)s) AND bucket_start >= %(low)s AND bucket_start < %(high)s
    GROUP BY version_id
"""  # noqa: S608
# Install reports settle a minute after they arrive; rollup minutes after 15 (a window later than that,
# from a device that was offline, still reaches the rollups and the console but not these counters).
INSTALL_SETTLE = timedelta(minutes=1)
ROLLUP_SETTLE = timedelta(minutes=15)
Totals = dict[int, list[float]]


def _add(*parts: Totals) -> Totals:
    total: Totals = {}
    for part in parts:
        for key, values in part.items():
            total[key] = [a + b for a, b in zip(total[key], values, strict=True)] if key in total else list(values)
    return total


class _Settled:
    """Totals of the rows before a watermark, kept in the shared cache: a scrape aggregates only newer rows.

    A state is always the exact aggregate of the rows up to its watermark, so processes racing to
    store one store equivalent ones; a lost cache only costs one full aggregation. Rows deleted
    after they settled stay counted, which keeps the counters monotonic.
    """

    def __init__(self, name: str):
        self.key = f"observability:settled:{name}:{settings.DATABASES['default']['NAME']}"

    def load(self, initial):
        try:
            state = cache.get(self.key)
        except Exception as exc:  # Redis down: aggregate everything this time
            logger.warning("domain metrics: cache unavailable: %s", exc)
            state = None
        return state or (initial, {})

    def store(self, watermark, totals: Totals) -> None:
        try:
            cache.set(self.key, (watermark, totals), timeout=None)
        except Exception as exc:
            logger.warning("domain metrics: cache unavailable: %s", exc)


def _buckets(bounds: Sequence[float], counts: Sequence[int], total: int) -> list[tuple[str, float]]:
    return [*((floatToGoString(b), float(c)) for b, c in zip(bounds, counts, strict=True)), ("+Inf", float(total))]


class DomainCollector:
    """Aggregates the domain metrics from PostgreSQL (a prometheus_client collector)."""

    def __init__(self, *, now: datetime | None = None):
        self.now = now or timezone.now()

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            families = self._families()
            up = 1
        except DatabaseError:
            logger.exception("domain metrics: the database query failed")
            families, up = [], 0
        yield from families
        yield from self._telemetry_buffer()
        yield GaugeMetricFamily("hotswap_domain_metrics_up", "1 when the domain metrics could be read from the "
                                "database, else 0.", value=up)
        yield GaugeMetricFamily("hotswap_domain_metrics_duration_seconds", "Time the domain metrics took to "
                                "aggregate.", value=time.perf_counter() - started)

    @staticmethod
    def _telemetry_buffer() -> Iterator[Metric]:
        from devices.heartbeats import set_aside_counts
        from devices.services.telemetry import metric_buffer_depth  # devices' services import this module

        try:
            waiting, rejected = metric_buffer_depth()
            set_aside = set_aside_counts()
        except RedisError:
            logger.warning("domain metrics: Redis did not answer for the metric-window buffer")
            return
        yield GaugeMetricFamily("hotswap_metric_windows_buffered", "Check-ins whose metric windows wait in Redis "
                                "for the flush to PostgreSQL (alert when it keeps growing).", value=waiting)
        yield GaugeMetricFamily("hotswap_metric_windows_rejected", "Check-ins whose metric windows the database "
                                "refused at the flush, set aside in Redis.", value=rejected)
        # Counted in Redis, where the flushes (Celery workers, anywhere) set entries aside.
        yield CounterMetricFamily("hotswap_heartbeats_set_aside", "Buffered heartbeats the database refused at the "
                                  "flush, set aside in Redis (the others were written).",
                                  value=set_aside.get("heartbeats", 0))
        yield CounterMetricFamily("hotswap_metric_windows_set_aside", "Buffered metric windows the database refused "
                                  "at the flush, set aside in Redis (the others were written).",
                                  value=set_aside.get("metric-windows", 0))

    def _families(self) -> list[Metric]:
        outermost = not connection.in_atomic_block
        with transaction.atomic(), connection.cursor() as cursor:
            if outermost:
                # One snapshot for every query, read only (inside a caller's transaction, only the timeout).
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")

            def rows(sql: str, **params) -> list[tuple]:
                cursor.execute(sql, params or None)
                # numeric sums arrive as Decimal; prometheus_client wants plain numbers
                return [tuple(float(v) if isinstance(v, Decimal) else v for v in row) for row in cursor.fetchall()]

            versions = rows(_VERSIONS_SQL)
            labels = {pk: (name, version) for pk, name, version, _ in versions}
            return [
                *self._registry(versions),
                *self._validations(rows(_VALIDATIONS_SQL)),
                *self._distributions(rows(_DISTRIBUTIONS_SQL), rows(_FINISHED_SQL)),
                *self._devices(rows(_DEVICES_SQL), labels),
                *self._installs(self._install_totals(rows), labels),
                *self._inference(self._inference_totals(rows, list(labels)), labels),
            ]

    def _install_totals(self, rows) -> Totals:
        settled = _Settled("installs")
        low, totals = settled.load(0)
        cut = self.now - INSTALL_SETTLE
        high, newest = rows(_INSTALLS_SETTLED_SQL, low=low, cut=cut)[0]
        if newest < low:  # the table was emptied or the database replaced: start over
            low, totals = 0, {}
            high, newest = rows(_INSTALLS_SETTLED_SQL, low=0, cut=cut)[0]
        if high > low:
            totals = _add(totals, self._totals(rows(_INSTALLS_SQL, low=low, high=high)))
            settled.store(high, totals)
        return _add(totals, self._totals(rows(_INSTALLS_SQL, low=high, high=2**63 - 1)))

    def _inference_totals(self, rows, version_ids: list[int]) -> Totals:
        settled = _Settled("inference")
        low, totals = settled.load(datetime.min.replace(tzinfo=UTC))
        cut = (self.now - ROLLUP_SETTLE).replace(second=0, microsecond=0)
        if cut > low:
            totals = _add(totals, self._totals(rows(_INFERENCE_SQL, versions=version_ids, low=low, high=cut)))
            settled.store(cut, totals)
        else:
            cut = low
        return _add(totals, self._totals(rows(_INFERENCE_SQL, versions=version_ids, low=cut,
                                                  high=datetime.max.replace(tzinfo=UTC))))

    @staticmethod
    def _totals(rows: list[tuple]) -> Totals:
        return {row[0]: list(row[1:]) for row in rows}

    @staticmethod
    def _registry(versions: list[tuple]) -> Iterator[Metric]:
        uploaded = CounterMetricFamily("hotswap_models_uploaded", "Model versions uploaded, by model.",
                                       labels=["model"])
        by_status = GaugeMetricFamily("hotswap_model_versions", "Model versions in the registry, by model and "
                                      "status.", labels=["model", "status"])
        per_model = Counter(name for _, name, _, _ in versions)
        for name, count in sorted(per_model.items()):
            uploaded.add_metric([name], count)
        for (name, status), count in sorted(Counter((name, status) for _, name, _, status in versions).items()):
            by_status.add_metric([name, status], count)
        yield uploaded
        yield by_status

    @staticmethod
    def _validations(rows: list[tuple]) -> Iterator[Metric]:
        family = HistogramMetricFamily("hotswap_model_validation_duration_seconds", "Validation runs (integrity "
                                       "to quality gates, on a worker) and their wall time, by outcome.",
                                       labels=["outcome"])
        for status, count, total, *buckets in sorted(rows):
            family.add_metric([status], _buckets(VALIDATION_BUCKETS, buckets, count), float(total))
        yield family

    @staticmethod
    def _distributions(by_status: list[tuple], finished: list[tuple]) -> Iterator[Metric]:
        created = CounterMetricFamily("hotswap_distributions_created", "Distributions created, by strategy.",
                                      labels=["strategy"])
        active = GaugeMetricFamily("hotswap_distributions_active", "Open distributions (scheduled, running, "
                                   "paused), by strategy and status.", labels=["strategy", "status"])
        succeeded = CounterMetricFamily("hotswap_distributions_succeeded", "Distributions that completed, by "
                                        "strategy.", labels=["strategy"])
        failed = CounterMetricFamily("hotswap_distributions_failed", "Distributions rolled back or aborted, by "
                                     "strategy and outcome.", labels=["strategy", "outcome"])
        duration = HistogramMetricFamily("hotswap_distribution_duration_seconds", "Time from a distribution's "
                                         "start to its completion, rollback or abort, by strategy and outcome.",
                                         labels=["strategy", "outcome"])
        created_by_strategy: Counter[str] = Counter()
        for strategy, status, count in sorted(by_status):
            created_by_strategy[strategy] += count
            if status in ("scheduled", "running", "paused"):
                active.add_metric([strategy, status], count)
        for strategy, count in sorted(created_by_strategy.items()):
            created.add_metric([strategy], count)
        for strategy, outcome, count, total, *buckets in sorted(finished):
            if outcome == "completed":
                succeeded.add_metric([strategy], count)
            else:
                failed.add_metric([strategy, outcome], count)
            duration.add_metric([strategy, outcome], _buckets(DISTRIBUTION_BUCKETS, buckets, count), float(total))
        yield from (created, active, succeeded, failed, duration)

    @staticmethod
    def _devices(groups: list[tuple], labels: dict) -> Iterator[Metric]:
        online = GaugeMetricFamily("hotswap_devices_online", "Devices that checked in recently, by region.",
                                   labels=["region"])
        offline = GaugeMetricFamily("hotswap_devices_offline", f"Devices silent for more than "
                                    f"{settings.DEVICE_OFFLINE_AFTER_SECONDS} s, by region.", labels=["region"])
        # Regions come from enrollment: the largest METRICS_MAX_REGIONS keep their label, the rest are "other".
        running: Counter[int] = Counter({version_id: count for _, status, version_id, count in groups
                                         if status == "running"})
        devices = [(region, status, count) for region, status, _, count in groups if status != "running"]
        sizes: Counter[str] = Counter()
        for region, _, count in devices:
            sizes[region or "unknown"] += count
        kept = {region for region, _ in sizes.most_common(settings.METRICS_MAX_REGIONS)}
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for region, status, count in devices:
            name = region or "unknown"
            counts[status][name if name in kept else "other"] += count
        for region, count in sorted(counts["active"].items()):
            online.add_metric([region], count)
        for region, count in sorted(counts["offline"].items()):
            offline.add_metric([region], count)
        running_family = GaugeMetricFamily("hotswap_devices_running", "Online devices running each model version.",
                                           labels=["model", "version"])
        active = GaugeMetricFamily("hotswap_model_versions_active", "Versions of each model running on at least "
                                   "one online device.", labels=["model"])
        per_model: Counter[str] = Counter()
        for version_id, count in sorted(running.items()):
            if version_id in labels:
                running_family.add_metric(list(labels[version_id]), count)
                per_model[labels[version_id][0]] += 1
        for name, count in sorted(per_model.items()):
            active.add_metric([name], count)
        yield from (online, offline, running_family, active)

    @staticmethod
    def _installs(totals: Totals, labels: dict) -> Iterator[Metric]:
        updated = CounterMetricFamily("hotswap_devices_updated", "Devices that reported a new model version "
                                      "active, by model and version.", labels=["model", "version"])
        swap = HistogramMetricFamily("hotswap_model_swap_duration_seconds", "Time from a device receiving a "
                                     "manifest to serving the new model (download, verify, load, warm up, swap), "
                                     "as devices report it, by model and version.", labels=["model", "version"])
        for version_id, (count, timed, total, *buckets) in sorted(totals.items()):
            if version_id in labels:
                updated.add_metric(list(labels[version_id]), count)
                swap.add_metric(list(labels[version_id]), _buckets(SWAP_BUCKETS, buckets, timed), float(total))
        yield updated
        yield swap

    @staticmethod
    def _inference(totals: Totals, labels: dict) -> Iterator[Metric]:
        latency = HistogramMetricFamily("hotswap_inference_latency_seconds", "Inference latency devices report, "
                                        "by model and version (from their fixed-bucket histograms; _sum is the "
                                        "count-weighted median, devices report percentiles, not sums).",
                                        labels=["model", "version"])
        inferences = CounterMetricFamily("hotswap_inferences", "Inferences devices report, by model and version.",
                                         labels=["model", "version"])
        errors = CounterMetricFamily("hotswap_inference_errors", "Failed inferences devices report, by model and "
                                     "version.", labels=["model", "version"])
        for version_id, (count, error_count, total, *slots) in sorted(totals.items()):
            if version_id not in labels:
                continue
            label = list(labels[version_id])
            inferences.add_metric(label, count)
            errors.add_metric(label, error_count)
            cumulative = [sum(slots[:i + 1]) for i in range(len(slots))]
            latency.add_metric(label, _buckets(INFERENCE_BUCKETS, cumulative[:-1], cumulative[-1]), float(total))
        yield from (latency, inferences, errors)


def domain_exposition() -> bytes:
    """The domain metrics in Prometheus text format, from the shared cache when fresh enough."""
    ttl = settings.METRICS_CACHE_SECONDS
    if ttl > 0:
        try:
            cached = cache.get(CACHE_KEY)
        except Exception as exc:  # Redis down: /metrics still answers, from the database
            logger.warning("domain metrics: cache unavailable: %s", exc)
            cached, ttl = None, 0
        if cached is not None:
            return cached
    text = generate_latest(DomainCollector())
    if ttl > 0:
        try:
            cache.set(CACHE_KEY, text, timeout=ttl)
        except Exception as exc:
            logger.warning("domain metrics: cache unavailable: %s", exc)
    return text


def exposition() -> bytes:
    """Everything /metrics serves: this process's (or all workers', in multiprocess mode) and the domain's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        process = generate_latest(registry)
    else:
        process = generate_latest(REGISTRY)
    return process + domain_exposition()
