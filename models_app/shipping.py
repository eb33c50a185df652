"""Model version status: the one place it changes, and the one rule that says whether a version may ship."""

from __future__ import annotations

import logging

from django.db.models import Q
from django.utils import timezone

from models_app.models import ModelVersion

logger = logging.getLogger(__name__)

V = ModelVersion.Status
_ALL = set(V)
# Target status -> the statuses it may be reached from. A corrupt version stays corrupt (its bytes are not
# what was validated; delete it and upload again), and a deprecated one is not validated again.
TRANSITIONS_FROM: dict[str, set[str]] = {
    V.VALIDATING: _ALL - {V.DEPRECATED, V.CORRUPT},
    V.PASSED: _ALL - {V.DEPRECATED, V.CORRUPT},
    V.FAILED: _ALL - {V.DEPRECATED, V.CORRUPT},
    V.NEEDS_APPROVAL: _ALL - {V.DEPRECATED, V.CORRUPT},
    V.DEPRECATED: _ALL - {V.DEPRECATED, V.CORRUPT},
    V.CORRUPT: _ALL - {V.CORRUPT},
}


def model_version_status_change(*, version_id: int, to: str, now=None, **fields) -> bool:
    """Moves a version to `to` if its current status allows it (conditional UPDATE); False: it did not move."""
    now = now or timezone.now()
    return ModelVersion.objects.filter(pk=version_id, status__in=TRANSITIONS_FROM[to]).update(
        status=to, updated_at=now, **fields) == 1


def status_ships(status: str) -> bool:
    """Whether a version in this status may reach a device at all: the check-in applies this to desired state."""
    return status != V.CORRUPT


def version_refusal(version: ModelVersion, *, rollback: bool = False, unvalidated_ok: bool = False) -> str | None:
    """Why `version` may not ship (to a distribution, a desired state, a download), or None when it may.

    `rollback`: a deprecated version may be returned to. `unvalidated_ok`: an operator may pin a version
    still being validated on chosen devices; a distribution waits for the verdict.
    """
    if not status_ships(version.status):
        found = version.scrub_error or "altered"
        return (f"{version.model_id}'s stored artifact no longer matches its SHA-256 ({found}); it is never "
                "shipped. Delete it and upload it again.")
    if not version.sha256_verified:
        # Not even an operator's pin or an Admin's approval: nobody has yet proved the bytes are the declared ones.
        return (f"{version.model_id}'s bytes have not been checked against its SHA-256 yet (the validation worker "
                "hashes them first); it cannot ship until they are.")
    if version.status == V.DEPRECATED:
        return None if rollback else f"{version.model_id} is deprecated; only a rollback may return to it."
    if version.status == V.PASSED or version.approved_at is not None:
        return None
    if version.status in (V.UPLOADED, V.VALIDATING):
        return None if unvalidated_ok else f"{version.model_id} is still being validated; wait until it passed."
    if version.status == V.NEEDS_APPROVAL:
        return f"{version.model_id} could not be executed by validation; an Admin must approve it first."
    return f"{version.model_id} failed validation; an Admin must approve it (with a reason) before it ships."


def shippable_versions_q() -> Q:
    """version_refusal(v) is None, as a filter: verified, passed or approved, neither deprecated nor corrupt."""
    return ((Q(status=V.PASSED) | Q(approved_at__isnull=False)) & ~Q(status__in=[V.DEPRECATED, V.CORRUPT])
            & Q(sha256_verified=True))
