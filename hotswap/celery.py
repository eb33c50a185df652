"""The Celery application; configuration comes from Django settings (CELERY_*)."""

import os

from celery import Celery

from hotswap.observability import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hotswap.settings.base")

app = Celery("hotswap")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Every process that loads the project (web, worker, beat, manage.py) imports this module first:
# its spans go where OTEL_TRACES_EXPORTER says, and task messages carry the trace context.
tracing.configure()


def routed_queues() -> list[str]:
    """Every queue a task of this app is routed to: a worker consuming them all runs every task."""
    app.loader.import_default_modules()
    return sorted({app.amqp.router.route({}, name)["queue"].name for name in app.tasks})
