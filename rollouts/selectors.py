"""Read side of rollouts: a distribution's progress per stage and what it is waiting for."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from rollouts import planning
from rollouts.models import Distribution, Stage

# Assignment states grouped the way operators read progress.
_FAILED = ("failed", "timed_out")
_INSTALLING = ("offered", "downloading", "installed")


def distribution_list(*, filters: dict | None = None) -> QuerySet[Distribution]:
    filters = filters or {}
    queryset = Distribution.objects.select_related("version__ai_model", "version_b", "created_by")
    if status := filters.get("status"):
        queryset = queryset.filter(status=status)
    if strategy := filters.get("strategy"):
        queryset = queryset.filter(strategy=strategy)
    if model := filters.get("model"):
        queryset = queryset.filter(version__ai_model__name=model)
    return queryset


def _stage_progress(stage: Stage, counts: dict[str, int]) -> dict:
    targeted = sum(n for state, n in counts.items() if state not in ("superseded", "cancelled"))
    active = counts.get("active", 0)
    failed = sum(counts.get(state, 0) for state in _FAILED)
    finished = active + failed
    return {
        "targeted": targeted,
        "pending": counts.get("pending", 0),
        "offered": sum(counts.get(state, 0) for state in ("offered", "downloading", "installed", "active", *_FAILED,
                                                            "rolled_back")),
        "installing": sum(counts.get(state, 0) for state in _INSTALLING),
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
        left = max((stage.soak_ends_at - now).total_seconds(), 0) if stage.soak_ends_at else 0
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
        "stages": per_stage,
    }
