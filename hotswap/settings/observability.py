"""Observability settings: log level and format, who may read /metrics, readiness timeouts."""

import sys

from hotswap.settings.env import env, log_format, networks

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# json: one JSON object per line (production); console: readable lines for a terminal, the default of
# runstack (the dev mode), for itself and, through LOG_FORMAT in their environment, its children.
LOG_FORMAT = log_format(default="console" if sys.argv[1:2] == ["runstack"] else "json")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "hotswap.observability.logs.ContextFilter"},
        "periodic_tasks": {"()": "hotswap.observability.logs.PeriodicTaskFilter"},
        # Signed download links (local tokens, presigned S3 queries) are logged without their signature.
        "signed_urls": {"()": "hotswap_device.logs.SignedUrlFilter"},
    },
    "formatters": {
        "json": {"()": "hotswap.observability.logs.JsonFormatter"},
        "console": {"()": "hotswap.observability.logs.ConsoleFormatter"},
    },
    "handlers": {"default": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["context", "periodic_tasks", "signed_urls"]}},
    "root": {"handlers": ["default"], "level": LOG_LEVEL},
    "loggers": {
        # httpx logs every request at INFO: the fleet simulator would print one line per check-in.
        "django.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # The embedded PostgreSQL's wrapper narrates every pg_ctl call at INFO, the stop of `runstack` included.
        "pgserver": {"level": "WARNING"},
    },
}
# The worker logs through LOGGING too (JSON with task ids) instead of Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# /metrics: open to these networks (every X-Forwarded-For hop must be inside too), or to a bearer token.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = networks("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
# Domain metrics are aggregated in PostgreSQL at most once per this many seconds, shared by every worker.
METRICS_CACHE_SECONDS = env.int("METRICS_CACHE_SECONDS", default=10)
# Regions beyond the largest N are reported as "other": a label's values stay few whatever devices enroll with.
METRICS_MAX_REGIONS = env.int("METRICS_MAX_REGIONS", default=50)

# /ready: each dependency gets this long to answer.
READY_TIMEOUT_SECONDS = env.float("READY_TIMEOUT_SECONDS", default=2.0)
