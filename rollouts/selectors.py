"""Read side of rollouts: a distribution's progress per stage and what it is waiting for."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from rollouts import assignment_states as states
from rollouts import planning
from rollouts.models import Distribution, Stage


def distribution_list(*, filters: dict | None = None) -> QuerySet[Distribution]:
    filters = filters or {}
    queryset = Distribution.objects.select_related("ai_model", "version__ai_model", "version_b", "created_by")
    if status := filters.get("status"):
        queryset = queryset.filter(status=status)
    if strategy := filters.get("strategy"):
        queryset = queryset.filter(strategy=strategy)
    if model := filters.get("model"):
        queryset = queryset.filter(ai_model__name=model)
    return queryset


def _stage_progress(stage: Stage, counts: dict[str, int]) -> dict:
    targeted = sum(n for state, n in counts.items() if state not in states.NOT_COUNTED)
    active = counts.get(states.A.ACTIVE, 0)
    failed = sum(counts.get(state, 0) for state in states.FAILED)
    finished = active + failed
    return {
        "targeted": targeted,
        "pending": counts.get("pending", 0),
        "offered": sum(counts.get(state, 0) for state in states.OFFERED_ONCE),
        "installing": sum(counts.get(state, 0) for state in states.IN_FLIGHT),
        "installed": counts.get("installed", 0) + active,
        "active": active,
        "failed": failed,
        "rolled_back": counts.get("rolled_back", 0),
        "success_rate": round(active / finished, 4) if finished else None,
    }


def distribution_waiting_for(distribution: Distribution, stage: Stage | None, progress: dict | None,
                             *, now: datetime) -> str:
    """What the distribution waits for, in an operator's words."""
    status = distribution.status
    if status == Distribution.Status.SCHEDULED:
        return f"its scheduled start at {distribution.scheduled_at:%Y-%m-%d %H:%M:%S %Z}"
    if status == Distribution.Status.PAUSED:
        return f"an operator to resume or roll back ({distribution.status_reason})"
    if status != Distribution.Status.RUNNING or stage is None:
        return ""
    if stage.status == Stage.Status.PENDING:
        return f"the delay before {stage.name}"
    if stage.status == Stage.Status.INSTALLING:
        return f"installs on {progress['pending'] + progress['installing']} device(s) of {stage.name}"
    if stage.status == Stage.Status.SOAKING:
        from rollouts.health import telemetry_due

        left = max((stage.soak_ends_at - now).total_seconds(), 0) if stage.soak_ends_at else 0
        due = telemetry_due(stage)
        if not left and due is not None and now < due:
            wait = timedelta(seconds=int((due - now).total_seconds()))
            return (f"the first metric windows of {stage.name} (up to {wait} more: one window and one poll after "
                    "the installs) and the judge's verdict")
        return f"the soak of {stage.name} ({timedelta(seconds=int(left))} left) and the judge's verdict"
    if stage.status == Stage.Status.AWAITING_APPROVAL:
        if stage.kind == Stage.Kind.AB_TEST:
            return "an operator to name the A/B winner (approve with a winner)"
        return f"an operator's approval of {stage.name}"
    return ""


def distribution_status(*, distribution: Distribution, now: datetime | None = None) -> dict:
    """Progress per stage and overall, the current stage and what the distribution waits for."""
    now = now or timezone.now()
    stages = list(distribution.stages.order_by("index"))
    counts = planning.stage_counts([stage.pk for stage in stages])
    per_stage, total = [], {}
    current = next((s for s in stages if s.status not in (Stage.Status.PASSED,)), None)
    for stage in stages:
        progress = _stage_progress(stage, counts[stage.pk])
        for key, value in progress.items():
            if key != "success_rate":
                total[key] = total.get(key, 0) + value
        per_stage.append({
            "index": stage.index, "name": stage.name, "kind": stage.kind, "status": stage.status,
            "gate": stage.gate, "percent": stage.percent, "region": stage.region,
            "soak_seconds": stage.soak_seconds, "started_at": stage.started_at, "soak_ends_at": stage.soak_ends_at,
            "finished_at": stage.finished_at, "verdict": stage.verdict, "evidence": stage.evidence,
            "progress": progress,
        })
    finished = total.get("active", 0) + total.get("failed", 0)
    total["success_rate"] = round(total["active"] / finished, 4) if finished else None
    current_progress = per_stage[current.index]["progress"] if current else None
    return {
        "id": distribution.pk,
        "status": distribution.status,
        "status_reason": distribution.status_reason,
        "current_stage": current.index if current and distribution.is_open else None,
        "waiting_for": distribution_waiting_for(distribution, current, current_progress, now=now),
        "progress": total,
        "live_metrics": distribution_live_metrics(distribution=distribution, now=now) if distribution.is_open
        else None,
        "stages": per_stage,
    }


def distribution_live_metrics(*, distribution: Distribution, now: datetime | None = None) -> dict | None:
    """The current stage's new-version figures against its baseline, as the health judge sees them now."""
    from rollouts.health import stage_samples, summary_compare

    now = now or timezone.now()
    stage = distribution.stages.filter(status__in=(Stage.Status.INSTALLING, Stage.Status.SOAKING,
                                                   Stage.Status.AWAITING_APPROVAL)).order_by("index").first()
    if stage is None:
        return None
    stage.distribution = distribution
    new, baseline, baseline_is = stage_samples(stage, now=now)
    return {"stage": stage.index, "baseline_is": baseline_is, **summary_compare(new, baseline)}


# Above this many devices the series come from the fleet-wide per-minute rollup (all devices running
# the versions) instead of the distribution's own devices' raw windows.
OWN_DEVICES_SERIES_LIMIT = 20_000

_OWN_SERIES_SQL = """
    SELECT w.version_id, {group} AS grp,
           to_timestamp(floor(extract(epoch FROM w.window_end) / %(step)s) * %(step)s) AS slice,
           sum(w.inference_count)::bigint, sum(w.error_count)::bigint,
           sum(w.latency_p50_ms * w.inference_count), sum(w.latency_p99_ms * w.inference_count),
           sum(w.accuracy * w.labelled_count) FILTER (WHERE w.accuracy IS NOT NULL),
           sum(w.labelled_count) FILTER (WHERE w.accuracy IS NOT NULL)
    FROM rollouts_assignment a
    JOIN devices_device d ON d.id = a.device_id
    JOIN devices_metricwindow w ON w.device_id = a.device_id
    WHERE a.distribution_id = %(distribution)s AND w.version_id = ANY(%(versions)s)
      AND w.window_end >= %(since)s AND w.window_end < %(until)s
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def _own_device_rows(distribution: Distribution, *, versions: list[int], since: datetime, until: datetime,
                     interval_seconds: int, group_by: str) -> list[dict]:
    from devices.telemetry_selectors import GROUPS

    group = "d." + GROUPS[group_by] if group_by != "none" else "''"
    with connection.cursor() as cursor:
        cursor.execute(_OWN_SERIES_SQL.format(group=group), {
            "distribution": distribution.pk, "versions": versions, "since": since, "until": until,
            "step": interval_seconds})
        rows = cursor.fetchall()
    return [{"version_id": version_id, "group": grp or None, "slice_start": at, "inference_count": count,
             "error_rate": errors / count if count else None, "latency_p50_ms": p50w / count if count else None,
             "latency_p99_ms": p99w / count if count else None,
             "accuracy": accw / labelled if labelled else None}
            for version_id, grp, at, count, errors, p50w, p99w, accw, labelled in rows]


def distribution_metrics(*, distribution: Distribution, interval_seconds: int = 60, group_by: str = "none",
                         now: datetime | None = None) -> dict:
    """Time series per version (and group) of the distribution's own devices, with the stage boundaries and
    any rollback marked: what the console's charts draw. Very large distributions read the fleet-wide
    rollup instead (`scope` says which)."""
    from devices.telemetry_selectors import version_metrics

    now = now or timezone.now()
    started = distribution.started_at or distribution.scheduled_at
    since = started - timedelta(minutes=30)
    until = (distribution.finished_at or now) + timedelta(minutes=5)
    previous = set(distribution.assignments.exclude(previous_version=None).order_by()
                   .values_list("previous_version_id", flat=True).distinct())
    versions = {distribution.version_id, *([distribution.version_b_id] if distribution.version_b_id else []),
                *previous}
    names = dict(Distribution.version.field.related_model.objects.filter(pk__in=versions)
                 .values_list("pk", "model_id"))
    scope = "distribution" if distribution.device_count <= OWN_DEVICES_SERIES_LIMIT else "fleet"
    if scope == "distribution":
        rows = _own_device_rows(distribution, versions=sorted(versions), since=since, until=until,
                                interval_seconds=interval_seconds, group_by=group_by)
    else:
        rows = version_metrics(version_ids=sorted(versions), since=since, until=until, group_by=group_by,
                               interval_seconds=interval_seconds)
    series: dict[tuple, list] = {}
    for row in rows:
        key = (row["version_id"], row["group"])
        series.setdefault(key, []).append({
            "at": row["slice_start"], "inferences": row["inference_count"], "error_rate": row["error_rate"],
            "latency_p50_ms": row["latency_p50_ms"], "latency_p99_ms": row["latency_p99_ms"],
            "accuracy": row["accuracy"],
        })
    role = {distribution.version_id: "new", distribution.version_b_id: "b"}
    rollback = distribution.transitions.filter(to_status=Distribution.Status.ROLLED_BACK).first()
    return {
        "since": since, "until": until, "interval_seconds": interval_seconds, "group_by": group_by, "scope": scope,
        "series": [{"version": names.get(version_id), "role": role.get(version_id, "baseline"), "group": group,
                    "points": points} for (version_id, group), points in series.items()],
        "stages": [{"index": s.index, "name": s.name, "started_at": s.started_at, "finished_at": s.finished_at,
                    "verdict": s.verdict} for s in distribution.stages.order_by("index")],
        "rolled_back_at": rollback.at if rollback else None,
        "rollback_reason": rollback.reason if rollback else "",
    }
