"""Celery tasks of the rollouts app: thin, idempotent, ids in, one service call."""

from celery import shared_task

from rollouts import orchestrator


@shared_task(ignore_result=True)
def distribution_advance(distribution_id: int) -> None:
    orchestrator.distribution_advance(distribution_id=distribution_id)


@shared_task(ignore_result=True)
def distributions_tick() -> int:
    """Beat: advances every open distribution that is due; returns how many it looked at."""
    due = orchestrator.distributions_due(now=orchestrator.timezone.now())
    for distribution_id in due:
        orchestrator.distribution_advance(distribution_id=distribution_id)
    return len(due)
