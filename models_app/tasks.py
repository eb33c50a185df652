"""Thin Celery tasks of the model registry."""

from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings

from models_app import scrub, upload_sessions
from models_app.storage import artifact_store
from models_app.validation_runs import validation_run


@shared_task
def artifact_abandoned_uploads_cleanup(older_than_minutes: float | None = None, now: str | None = None) -> int:
    """Aborts multipart uploads / removes partial files that failed or crashed uploads left behind."""
    minutes = settings.ARTIFACT_UPLOAD_STALE_MINUTES if older_than_minutes is None else older_than_minutes
    return artifact_store().abandoned_uploads_abort(
        older_than=timedelta(minutes=minutes), now=datetime.fromisoformat(now) if now else None)


@shared_task(acks_late=True)
def model_version_validate(report_id: int) -> str | None:
    """Runs a queued validation; a duplicate or retried message finds it claimed and does nothing."""
    report = validation_run(report_id=report_id)
    return report.status if report else None


@shared_task
def artifacts_scrub(budget_bytes: int | None = None, now: str | None = None) -> dict:
    """Beat: re-hashes the least recently checked artifacts within a byte budget; altered ones become corrupt."""
    result = scrub.artifacts_scrub(budget_bytes=budget_bytes, now=datetime.fromisoformat(now) if now else None)
    return {"checked": result.checked, "bytes_read": result.bytes_read, "corrupt": result.corrupt,
            "storage_failed": result.storage_failed}


@shared_task
def upload_sessions_expire() -> int:
    """Beat: expires upload sessions past their expiry and aborts their parts (nothing of them stays stored)."""
    return upload_sessions.upload_sessions_expire()
