"""Reads for the dashboard: fleet figures aggregated in SQL (one query each) and the distributions worth watching."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Case, CharField, Count, F, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from devices.models import Device, ModelSlot
from rollouts.models import OPEN_STATUSES, Distribution
from rollouts.selectors import distribution_metrics

RECENT = timedelta(hours=24)  # a finished (or rolled-back) distribution stays on the dashboard this long
MAX_DISTRIBUTIONS = 10
# Chart resolutions in seconds per point: the finest that keeps a line under MAX_POINTS points is used.
INTERVALS = (60, 300, 900, 3600, 4 * 3600, 86400)
MAX_POINTS = 120
# distribution_metrics starts this long before the distribution (the baseline before the rollout).
LEAD = timedelta(minutes=30)

_D = Distribution.Status


def _fleet() -> QuerySet[Device]:
    # Decommissioned devices are history, not fleet; the status constraint allows only the three values.
    return Device.objects.exclude(status=Device.Status.DECOMMISSIONED).order_by()


def fleet_by_region() -> list[dict]:
    """Devices online (status active) and offline per region, in one grouped query."""
    rows = (_fleet().values("region")
            .annotate(online=Count("id", filter=Q(status=Device.Status.ACTIVE)),
                      offline=Count("id", filter=Q(status=Device.Status.OFFLINE)))
            .order_by("region"))
    return [{**row, "total": row["online"] + row["offline"]} for row in rows]


def fleet_versions_by_model() -> list[dict]:
    """Devices per (model, region, version of it they run), in one grouped query over the model slots.

    The version is the registry's model_id when what the device reports matches a registry version, else
    `<model>-<version>` as reported. Each model counts on its own: a device running three models counts
    once under each.
    """
    reported = Concat("ai_model__name", Value("-"), "reported_version", output_field=CharField())
    running = Coalesce("running_version__model_id", reported, output_field=CharField())
    slots = (ModelSlot.objects.exclude(device__status=Device.Status.DECOMMISSIONED).exclude(reported_version="")
             .order_by())
    rows = (slots.values(model=F("ai_model__name"), region=F("device__region"), running=running)
            .annotate(devices=Count("id")).order_by("model", "region", "running"))
    return [{"model": row["model"], "region": row["region"], "version": row["running"], "devices": row["devices"]}
            for row in rows]


def dashboard_distributions(*, now: datetime | None = None, recent: timedelta = RECENT,
                            limit: int = MAX_DISTRIBUTIONS) -> list[Distribution]:
    """Open distributions (running, then paused, then scheduled), then those finished within `recent`, newest
    first: a rollback stays in sight for a day."""
    now = now or timezone.now()
    rank = Case(When(status=_D.RUNNING, then=0), When(status=_D.PAUSED, then=1), When(status=_D.SCHEDULED, then=2),
                default=3)
    queryset = (Distribution.objects.filter(Q(status__in=OPEN_STATUSES) | Q(finished_at__gte=now - recent))
                .select_related("version", "version_b").order_by(rank, "-finished_at", "-id"))
    return list(queryset[:limit])


def chart_interval(distribution: Distribution, *, now: datetime) -> int:
    """Seconds per chart point: the finest resolution that keeps the distribution's lines under MAX_POINTS."""
    start = distribution.started_at or distribution.scheduled_at
    span = ((distribution.finished_at or now) - start + LEAD).total_seconds()
    return next((step for step in INTERVALS if span / step <= MAX_POINTS), INTERVALS[-1])


def distribution_series(*, distribution: Distribution, now: datetime | None = None) -> dict:
    """The distribution's time series per version role, stage starts and rollback (distribution_metrics), at
    the resolution its charts use."""
    now = now or timezone.now()
    return distribution_metrics(distribution=distribution, interval_seconds=chart_interval(distribution, now=now),
                                now=now)
