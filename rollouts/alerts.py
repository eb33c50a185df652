"""Alerts: a halted, rolled back or undecided distribution is logged, and posted to a webhook if one is set."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from rollouts.models import Distribution

logger = logging.getLogger("hotswap.alerts")


def alert_raise(*, distribution: Distribution, kind: str, reason: str, evidence: dict | None = None) -> dict:
    """Logs the alert at once; the webhook (ROLLOUT_ALERT_WEBHOOK_URL) is called after commit, with retries."""
    payload = {
        "kind": kind, "distribution": distribution.pk, "name": str(distribution), "status": distribution.status,
        "version": distribution.version.model_id, "strategy": distribution.strategy, "reason": reason,
        "evidence": evidence or {}, "at": timezone.now().isoformat(),
    }
    logger.warning("rollout alert: %s: %s", kind, reason, extra={"alert": payload})
    if settings.ROLLOUT_ALERT_WEBHOOK_URL:
        from rollouts.tasks import alert_deliver

        transaction.on_commit(lambda: alert_deliver.delay(payload))
    return payload
