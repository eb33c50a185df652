"""Integrity scrub: re-hash stored artifacts over time and mark any whose bytes changed as corrupt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from prometheus_client import Counter

from models_app.models import ModelVersion
from models_app.shipping import model_version_status_change
from models_app.storage import ArtifactMissingError, StorageUnavailableError, artifact_store

logger = logging.getLogger(__name__)
alerts = logging.getLogger("hotswap.alerts")

CORRUPT_FOUND = Counter("hotswap_artifacts_corrupt_found_total",
                        "Stored artifacts the integrity scrub found altered or missing (each counted once).")


@dataclass
class ScrubResult:
    """One scrub run: versions checked, bytes read, model_ids newly marked corrupt, and whether storage failed."""

    checked: int = 0
    bytes_read: int = 0
    corrupt: list[str] = field(default_factory=list)
    storage_failed: bool = False


def artifacts_scrub(*, budget_bytes: int | None = None, now: datetime | None = None) -> ScrubResult:
    """Re-hashes the versions least recently checked, until `budget_bytes` are read; idempotent.

    S3's own checksums are not used. SeaweedFS 4.48 keeps a full-object ChecksumSHA256 only for a single PUT
    sent with one; a multipart upload gets a COMPOSITE checksum (of the parts' checksums, not of the bytes),
    and uploads here send none (S3_PART_CHECKSUMS). A stored checksum is also only metadata: it does not
    notice bytes that rot under it, and whoever overwrites the object replaces it. Reading the bytes is
    what proves them; the budget keeps that cheap.
    """
    now = now or timezone.now()
    budget = settings.ARTIFACT_SCRUB_BYTES_PER_RUN if budget_bytes is None else budget_bytes
    due_before = now - timedelta(hours=settings.ARTIFACT_SCRUB_INTERVAL_HOURS)
    due = (ModelVersion.objects.exclude(status=ModelVersion.Status.CORRUPT)
           .filter(Q(scrubbed_at__isnull=True) | Q(scrubbed_at__lt=due_before))
           .order_by(F("scrubbed_at").asc(nulls_first=True), "uploaded_at", "id")  # version_scrubbed_idx
           .only("pk", "model_id", "storage_key", "sha256", "size_bytes"))
    store, result = artifact_store(), ScrubResult()
    for version in due.iterator(chunk_size=100):
        if result.checked and result.bytes_read >= budget:
            break
        try:
            digest, size = store.digest(version.storage_key)
            problem = _problem(version, digest, size)
        except ArtifactMissingError:
            problem, size = "the stored object is missing", 0
        except StorageUnavailableError:
            result.storage_failed = True  # says nothing about the bytes: the next run tries again
            break
        result.checked += 1
        result.bytes_read += size
        if problem is None:
            ModelVersion.objects.filter(pk=version.pk).update(scrubbed_at=now)
        elif model_version_mark_corrupt(version=version, problem=problem, now=now):
            result.corrupt.append(version.model_id)
    return result


def _problem(version: ModelVersion, digest: str, size: int) -> str | None:
    if size != version.size_bytes:
        return f"stored size {size} bytes, uploaded {version.size_bytes}"
    if digest != version.sha256:
        return f"stored bytes hash to {digest}"
    return None


def model_version_mark_corrupt(*, version: ModelVersion, problem: str, now: datetime | None = None) -> bool:
    """Marks a version corrupt and alerts operators once; False when it already was."""
    now = now or timezone.now()
    with transaction.atomic():
        if not model_version_status_change(version_id=version.pk, to=ModelVersion.Status.CORRUPT, now=now,
                                           scrubbed_at=now, scrub_error=problem[:2000]):
            return False
        payload = {"kind": "artifact_corrupt", "model_id": version.model_id, "storage_key": version.storage_key,
                   "expected_sha256": version.sha256, "reason": problem, "at": now.isoformat()}
        alerts.error("artifact alert: %s is corrupt: %s; it is no longer shipped", version.model_id, problem,
                     extra={"alert": payload})
        CORRUPT_FOUND.inc()
        if settings.ROLLOUT_ALERT_WEBHOOK_URL:
            from rollouts.tasks import alert_deliver  # the operators' one webhook, with its retries

            transaction.on_commit(lambda: alert_deliver.delay(payload))
    return True
