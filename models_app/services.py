"""Writes to the model registry: upload, deprecate, delete."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import BinaryIO

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from hotswap.exceptions import ApplicationError, ConflictError
from hotswap.observability import tracing
from models_app.formats import ArtifactFormatError, DetectedFormat, FormatSniffer
from models_app.models import SEMVER_PATTERN, AIModel, Framework, ModelVersion
from models_app.shipping import model_version_status_change
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact
from models_app.validation_runs import validation_request

logger = logging.getLogger(__name__)

# Other apps register checks that say why a version cannot be deleted right now (e.g. the rollouts
# app: "deployed on 12 devices"); each returns a reason or None.
VersionInUseCheck = Callable[[ModelVersion], "str | None"]
VERSION_IN_USE_CHECKS: list[VersionInUseCheck] = []


def register_version_in_use_check(check: VersionInUseCheck) -> VersionInUseCheck:
    if check not in VERSION_IN_USE_CHECKS:
        VERSION_IN_USE_CHECKS.append(check)
    return check


def _semver_parts(version: str) -> dict:
    match = re.match(SEMVER_PATTERN, version)
    if not match:
        raise ApplicationError(
            "version must be semantic (MAJOR.MINOR.PATCH with an optional pre-release, e.g. 1.4.0 or 2.0.0-rc.1).",
            code="VALIDATION_ERROR", details=[{"field": "version", "message": "Not a semantic version."}],
        )
    major, minor, patch, prerelease = match.groups()
    return {"major": int(major), "minor": int(minor), "patch": int(patch),
            "prerelease": prerelease or "", "is_release": prerelease is None}


def _field_error(field: str, message: str, code: str = "VALIDATION_ERROR") -> ApplicationError:
    return ApplicationError(message, code=code, details=[{"field": field, "message": message}])


def model_version_upload(
    *,
    artifact: PendingArtifact,
    name: str,
    version: str,
    framework: str,
    uploaded_by: AbstractBaseUser | None,
    declared_sha256: str = "",
    description: str = "",
    task: str = "",
    tags: Sequence[str] = (),
    input_schema: list | None = None,
    output_schema: list | None = None,
    target_device_type: str = "",
    min_memory_mb: int | None = None,
    accelerator: str = "",
) -> tuple[ModelVersion, bool]:
    """Records a streamed artifact as a new ModelVersion; returns (version, created).

    The same name+version with identical bytes returns the existing version (a CI retry is
    harmless); different bytes are a conflict. On any failure nothing is left behind: the
    artifact is aborted or deleted and no row is written.
    """
    # From the first byte received to the row committed; the validation task continues this trace.
    with tracing.span("model.upload", start_time=artifact.started_ns, attributes={
        "model.id": f"{name}-{version}", "model.name": name, "model.version": version, "model.framework": framework,
        "artifact.size": artifact.size, "artifact.sha256": artifact.sha256,
    }):
        try:
            _semver_parts(version)
            if artifact.size == 0:
                raise _field_error("artifact", "The artifact is empty.", "EMPTY_ARTIFACT")
            if declared_sha256 and declared_sha256.lower() != artifact.sha256:
                raise ApplicationError(
                    f"Checksum mismatch: you declared sha256 {declared_sha256.lower()}, the received bytes hash to "
                    f"{artifact.sha256}. The upload was probably corrupted; nothing was stored.",
                    code="CHECKSUM_MISMATCH",
                    details=[{"field": "sha256", "message": "Does not match the uploaded bytes."}],
                    extra={"received_sha256": artifact.sha256, "received_size": artifact.size},
                )
            existing = existing_version(name, version, artifact.sha256)
            if existing:
                artifact.discard()
                return existing, False
            artifact.commit()
            detected = format_detect(artifact.sniffer, framework,
                                     lambda: artifact.store.open(artifact.key, artifact.size))
            model_version = model_version_record(
                name=name, version=version, framework=framework, storage_key=artifact.key, sha256=artifact.sha256,
                size=artifact.size, filename=artifact.filename, detected=detected, sha256_verified=True,
                uploaded_by=uploaded_by, description=description, task=task, tags=tags, input_schema=input_schema,
                output_schema=output_schema, target_device_type=target_device_type, min_memory_mb=min_memory_mb,
                accelerator=accelerator)
        except IntegrityError:
            # Another upload of the same name+version committed first: same bytes → return it, else conflict.
            artifact.discard()
            existing = existing_version(name, version, artifact.sha256)
            if existing:
                return existing, False
            raise
        except BaseException:
            artifact.discard()
            raise
        artifact.keep()
        logger.info("model version uploaded", extra={"model_id": model_version.model_id, "size": artifact.size})
        return model_version, True


def model_version_record(*, name: str, version: str, framework: str, storage_key: str, sha256: str, size: int,
                         filename: str, detected: DetectedFormat, sha256_verified: bool, uploaded_by,
                         description: str = "", task: str = "", tags: Sequence[str] = (),
                         input_schema: list | None = None, output_schema: list | None = None,
                         target_device_type: str = "", min_memory_mb: int | None = None,
                         accelerator: str = "") -> ModelVersion:
    """Writes the row of a version whose bytes are stored at `storage_key`, and queues its validation.

    Both upload paths end here. Raises IntegrityError when the same name+version committed first.
    """
    with transaction.atomic():
        ai_model = _model_get_or_create(
            name=name, framework=framework, owner=uploaded_by, description=description, task=task, tags=tags
        )
        model_version = ModelVersion(
            ai_model=ai_model, version=version, model_id=f"{name}-{version}", **_semver_parts(version),
            storage_key=storage_key, sha256=sha256, size_bytes=size, sha256_verified=sha256_verified,
            detected_format=detected.format, format_details=detected.details,
            original_filename=filename[:255], input_schema=input_schema or [],
            output_schema=output_schema or [], target_device_type=target_device_type,
            min_memory_mb=min_memory_mb, accelerator=accelerator or "none", uploaded_by=uploaded_by,
            traceparent=tracing.traceparent(),
        )
        model_version.full_clean()
        model_version.save()
        validation_request(version=model_version, requested_by=uploaded_by)
    return model_version


def existing_version(name: str, version: str, sha256: str) -> ModelVersion | None:
    existing = ModelVersion.objects.select_related("ai_model").filter(ai_model__name=name, version=version).first()
    if existing is None:
        return None
    if existing.sha256 != sha256:
        raise ConflictError(
            f"{existing.model_id} already exists with different content (sha256 {existing.sha256}). "
            "Versions are immutable: upload under a new version.",
            code="VERSION_EXISTS",
            extra={"model_id": existing.model_id, "existing_sha256": existing.sha256},
        )
    if existing.status == ModelVersion.Status.CORRUPT:
        # The same declared bytes, but what was stored did not hash to them: answering "already there" would
        # hand a re-run the rejected version instead of a working one.
        raise ConflictError(
            f"{existing.model_id} exists but its stored bytes did not match its SHA-256 ({existing.scrub_error}). "
            f"An Admin deletes it (DELETE /api/v1/models/{existing.model_id}) before it can be uploaded again; or "
            "upload under a new version.",
            code="VERSION_CORRUPT", extra={"model_id": existing.model_id})
    return existing


def format_detect(sniffer: FormatSniffer, framework: str, open_reader: Callable[[], BinaryIO]) -> DetectedFormat:
    try:
        detected = sniffer.result(open_reader)
    except ArtifactFormatError as exc:
        raise _field_error("artifact", exc.message, "INVALID_ARTIFACT") from exc
    if detected.framework != framework:
        raise ApplicationError(
            f"The artifact's content is {detected.format} ({Framework(detected.framework).label}), "
            f"which contradicts the declared framework '{framework}'.",
            code="FRAMEWORK_MISMATCH",
            details=[{"field": "framework", "message": f"Content is {detected.framework}, not {framework}."}],
        )
    return detected


def _model_get_or_create(*, name: str, framework: str, owner, description: str, task: str,
                         tags: Sequence[str]) -> AIModel:
    ai_model = AIModel.objects.select_for_update().filter(name=name).first()
    if ai_model is None:
        ai_model = AIModel(name=name, framework=framework, owner=owner, description=description,
                           task=task or "other", tags=list(tags))
        ai_model.full_clean()
        ai_model.save()
        return ai_model
    framework_check(ai_model, framework)
    changed = {k: v for k, v in {"description": description, "task": task, "tags": list(tags)}.items() if v}
    if changed:
        for field, value in changed.items():
            setattr(ai_model, field, value)
        ai_model.full_clean()
        ai_model.save(update_fields=[*changed, "updated_at"])
    return ai_model


def framework_check(ai_model: AIModel | None, framework: str) -> None:
    if ai_model is not None and ai_model.framework != framework:
        raise _field_error(
            "framework", f"Model '{ai_model.name}' is a {ai_model.framework} model; a version cannot change its "
            "framework.", "FRAMEWORK_MISMATCH",
        )


def model_version_deprecate(*, model_version: ModelVersion, actor: AbstractBaseUser | None) -> ModelVersion:
    """Marks a version deprecated (kept and downloadable, no longer offered for new rollouts). Idempotent."""
    now = timezone.now()
    model_version_status_change(version_id=model_version.pk, to=ModelVersion.Status.DEPRECATED, now=now,
                                deprecated_at=now)
    model_version.refresh_from_db()
    logger.info("model version deprecated", extra={"model_id": model_version.model_id, "actor": str(actor)})
    return model_version


def model_version_delete(*, model_version: ModelVersion, actor: AbstractBaseUser | None) -> None:
    """Deletes a version and its stored artifact; refused while it is in use.

    The object is deleted before the row is, inside the row's lock: if storage fails the row stays
    and the error is reported, so the registry never points at nothing without saying so.
    """
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().select_related("ai_model").get(pk=model_version.pk)
        reasons = [reason for check in VERSION_IN_USE_CHECKS if (reason := check(locked))]
        if reasons:
            raise ConflictError(
                f"{locked.model_id} is in use and cannot be deleted: {'; '.join(reasons)}.",
                code="VERSION_IN_USE", extra={"reasons": reasons},
            )
        artifact_store().delete(locked.storage_key)
        ai_model = locked.ai_model
        locked.delete()
        if not ai_model.versions.exists():
            ai_model.delete()
    logger.info("model version deleted", extra={"model_id": model_version.model_id, "actor": str(actor)})
