"""Thin Celery tasks of the model registry."""

from datetime import timedelta

from celery import shared_task

from models_app.storage import artifact_store
from models_app.validation_runs import validation_run


@shared_task
def artifact_abandoned_uploads_cleanup(older_than_hours: float = 24) -> int:
    """Aborts multipart uploads / removes partial files that a crashed web process left behind."""
    return artifact_store().abandoned_uploads_abort(older_than=timedelta(hours=older_than_hours))


@shared_task(acks_late=True)
def model_version_validate(report_id: int) -> str | None:
    """Runs a queued validation; a duplicate or retried message finds it claimed and does nothing."""
    report = validation_run(report_id=report_id)
    return report.status if report else None
