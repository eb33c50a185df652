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


@shared_task(bind=True, ignore_result=True, max_retries=8)
def alert_deliver(self, payload: dict) -> None:
    """POSTs an alert to ROLLOUT_ALERT_WEBHOOK_URL; retried with backoff (1, 2, 4 ... 128 s) until it gets a 2xx."""
    import httpx
    from django.conf import settings

    try:
        response = httpx.post(settings.ROLLOUT_ALERT_WEBHOOK_URL, json=payload, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc
