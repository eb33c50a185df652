"""Thin Celery tasks of the model registry."""

from datetime import timedelta

from celery import shared_task

from models_app.storage import artifact_store


@shared_task
def artifact_abandoned_uploads_cleanup(older_than_hours: float = 24) -> int:
    """Aborts multipart uploads / removes partial files that a crashed web process left behind."""
    return artifact_store().abandoned_uploads_abort(older_than=timedelta(hours=older_than_hours))
