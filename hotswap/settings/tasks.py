"""Celery: broker on the shared Redis, every periodic schedule declared here and only here."""

from datetime import timedelta

from hotswap.settings.env import env


def _celery_url(redis_url: str) -> str:
    # Celery names unix sockets redis+socket://; Django's cache and redis-py say unix://.
    return redis_url.replace("unix://", "redis+socket://", 1) if redis_url.startswith("unix://") else redis_url


def celery_broker_url(redis_url: str) -> str:
    return env.str("CELERY_BROKER_URL", default="") or _celery_url(redis_url)


CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Validations run models for seconds to minutes. They have a queue (and in runstack a worker) of their
# own, so rollout ticks, telemetry flushes and offline detection never wait behind them; everything
# else goes to the default queue ("celery").
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_VALIDATION_QUEUE = env.str("CELERY_VALIDATION_QUEUE", default="validation")
CELERY_TASK_ROUTES = {"models_app.tasks.model_version_validate": {"queue": CELERY_VALIDATION_QUEUE}}

METRIC_FLUSH_SECONDS = env.float("METRIC_FLUSH_SECONDS", default=2.0)

CELERY_BEAT_SCHEDULE = {
    # Retries the aborts a frozen S3 refused; aborts uploads open for ARTIFACT_UPLOAD_STALE_MINUTES (< 1 h).
    "abort-abandoned-uploads": {
        "task": "models_app.tasks.artifact_abandoned_uploads_cleanup",
        "schedule": timedelta(minutes=10),
    },
    # Aborts upload sessions past their expiry and their parts: nothing of an abandoned session stays stored.
    "expire-upload-sessions": {"task": "models_app.tasks.upload_sessions_expire", "schedule": timedelta(minutes=10)},
    # Re-hashes stored artifacts within a byte budget; an altered one is marked corrupt and never shipped.
    "scrub-artifacts": {"task": "models_app.tasks.artifacts_scrub", "schedule": timedelta(minutes=10)},
    # Check-ins buffer heartbeats in Redis; this bounds how stale last_seen is in PostgreSQL.
    "flush-device-heartbeats": {"task": "devices.tasks.device_heartbeats_flush",
                                "schedule": timedelta(seconds=env.int("HEARTBEAT_FLUSH_SECONDS", default=10))},
    # Check-ins buffer metric windows in Redis; this bounds how late they reach PostgreSQL and the judge.
    # A run the worker could not start within a few periods is dropped: the next one flushes it all.
    "flush-metric-windows": {"task": "devices.tasks.metric_windows_flush",
                             "schedule": timedelta(seconds=METRIC_FLUSH_SECONDS),
                             # django-celery-beat's spelling of Celery's `expires` (seconds)
                             "options": {"expire_seconds": 10 * METRIC_FLUSH_SECONDS}},
    "mark-silent-devices-offline": {"task": "devices.tasks.devices_mark_offline",
                                    "schedule": timedelta(seconds=env.int("OFFLINE_CHECK_SECONDS", default=30))},
    "roll-up-metric-windows": {"task": "devices.tasks.metric_rollup",
                               "schedule": timedelta(seconds=env.int("METRIC_ROLLUP_SECONDS", default=60))},
    # Advances every open distribution; approvals and creations also advance theirs at once.
    "advance-distributions": {"task": "rollouts.tasks.distributions_tick",
                              "schedule": timedelta(seconds=env.float("ROLLOUT_TICK_SECONDS", default=5.0))},
    "prune-metric-windows": {"task": "devices.tasks.metric_windows_prune", "schedule": timedelta(hours=6)},
    # Every login and refresh writes a row for its refresh token (the rotation blacklist); expired ones go.
    "flush-expired-jwts": {"task": "hotswap.accounts.tasks.jwt_expired_tokens_flush", "schedule": timedelta(hours=6)},
}
