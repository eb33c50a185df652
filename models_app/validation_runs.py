"""Validation runs: request, claim, execute in an isolated child, record the report, decide the version's status."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from hotswap.exceptions import ApplicationError, ConflictError
from hotswap.observability import tracing
from models_app.models import ModelVersion, TestSet, ValidationReport
from models_app.shipping import model_version_status_change, version_refusal
from models_app.storage import artifact_store
from models_app.testsets import npz_arrays
from models_app.validation import ResourceLimits, ValidationConfig, run_isolated
from models_app.validation.environment import environment

logger = logging.getLogger(__name__)

GATE_NAMES = set(settings.VALIDATION_GATES)
# Report outcome → version status. A newer request supersedes older ones; only the latest decides.
OUTCOME_STATUS = {
    ValidationReport.Status.PASSED: ModelVersion.Status.PASSED,
    ValidationReport.Status.FAILED: ModelVersion.Status.FAILED,
    ValidationReport.Status.ERROR: ModelVersion.Status.FAILED,
    ValidationReport.Status.NOT_EXECUTED: ModelVersion.Status.NEEDS_APPROVAL,
}


def gates_validate(gates: dict) -> dict:
    unknown = set(gates) - GATE_NAMES
    if unknown:
        raise ApplicationError(f"Unknown gate(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(GATE_NAMES))}.",
                               code="VALIDATION_ERROR", details=[{"field": f"gates.{g}", "message": "Unknown gate."}
                                                                 for g in sorted(unknown)])
    for name, value in gates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ApplicationError(f"Gate {name} needs a non-negative number.", code="VALIDATION_ERROR",
                                   details=[{"field": f"gates.{name}", "message": "Must be a non-negative number."}])
    return gates


def gates_for(version: ModelVersion, overrides: dict | None = None) -> dict:
    """Defaults ← the model's gates ← its device class's gates ← this request's overrides."""
    model_gates = dict(version.ai_model.quality_gates or {})
    classes = model_gates.pop("device_classes", {}) or {}
    gates = {**settings.VALIDATION_GATES, **model_gates}
    if version.target_device_type:
        gates.update(classes.get(version.target_device_type, {}))
    gates.update(overrides or {})
    return gates


def validation_request(*, version: ModelVersion, requested_by=None, test_set: TestSet | None = None,
                       gate_overrides: dict | None = None, queue: bool = True) -> ValidationReport:
    """Creates a pending report and queues it; a pending or running one for the version is returned instead."""
    if version.status == ModelVersion.Status.DEPRECATED:
        raise ConflictError(f"{version.model_id} is deprecated; it is not validated again.", code="VERSION_DEPRECATED")
    if version.status == ModelVersion.Status.CORRUPT:
        raise ConflictError(f"{version.model_id}'s stored artifact was altered; delete it and upload it again.",
                            code="ARTIFACT_CORRUPT")
    if test_set is not None and test_set.ai_model_id != version.ai_model_id:
        raise ApplicationError("That test set belongs to another model.", code="VALIDATION_ERROR",
                               details=[{"field": "test_set", "message": "Belongs to another model."}])
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(pk=version.pk).first()  # one request at a time per version
        active = version.validation_reports.filter(
            status__in=[ValidationReport.Status.PENDING, ValidationReport.Status.RUNNING]).first()
        if active:
            return active
        report = ValidationReport.objects.create(
            version=version, requested_by=requested_by, test_set=test_set,
            gate_overrides=gates_validate(gate_overrides or {}),
        )
        if queue:
            from models_app.tasks import model_version_validate

            # bind: the message carries the requester's trace (model.upload's) even though it is sent at commit.
            transaction.on_commit(tracing.bind(lambda: model_version_validate.delay(report.pk)))
    return report


def _claim(report_id: int) -> bool:
    """Conditional UPDATE: pending, or running but abandoned by a dead worker. 0 rows: someone else has it."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.VALIDATION_STALE_AFTER_SECONDS)
    claimable = Q(status=ValidationReport.Status.PENDING) | Q(status=ValidationReport.Status.RUNNING,
                                                              started_at__lt=stale)
    return ValidationReport.objects.filter(claimable, pk=report_id).update(
        status=ValidationReport.Status.RUNNING, started_at=now, attempts=F("attempts") + 1) == 1


@contextlib.contextmanager
def _local_copy(key: str, size: int, suffix: str) -> Iterator[Path]:
    """The stored object as a local file (the child needs a path); streamed, removed afterwards."""
    store = artifact_store()
    if not store.is_s3:
        yield Path(store.storage.path(key))
        return
    directory = Path(tempfile.mkdtemp(prefix="hotswap-validate-"))
    try:
        path = directory / f"artifact{suffix}"
        with store.open(key, size) as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target, 4 * 1024 * 1024)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _baseline(version: ModelVersion) -> ValidationReport | None:
    """The latest passed report of the closest earlier passed version of the same model."""
    earlier = (
        ModelVersion.objects.filter(ai_model_id=version.ai_model_id, status=ModelVersion.Status.PASSED)
        .filter(Q(major__lt=version.major) | Q(major=version.major, minor__lt=version.minor)
                | Q(major=version.major, minor=version.minor, patch__lt=version.patch))
        .order_by("-precedence").first()
    )
    if earlier is None:
        return None
    return earlier.validation_reports.filter(status=ValidationReport.Status.PASSED).first()


def validation_run(*, report_id: int) -> ValidationReport | None:
    """Runs one claimed validation end to end; returns None when the report was not claimable (idempotent)."""
    if not _claim(report_id):
        return None
    report = ValidationReport.objects.select_related("version__ai_model", "test_set").get(pk=report_id)
    version = report.version
    # A child of the task message's context (the upload's trace); a re-validation links to the upload.
    with tracing.span("model.validate", links=[version.traceparent], attributes={
        "model.id": version.model_id, "model.name": version.ai_model.name, "model.version": version.version,
        "validation.report_id": report.pk, "validation.attempt": report.attempts,
    }):
        model_version_status_change(version_id=version.pk, to=ModelVersion.Status.VALIDATING)
        baseline = _baseline(version)
        gates = gates_for(version, report.gate_overrides)
        config = _config(version, gates)
        try:
            with contextlib.ExitStack() as stack:
                baseline_metrics, baseline_source = _baseline_metrics(baseline, stack)
                config.baseline = baseline_metrics
                model_path = stack.enter_context(_local_copy(version.storage_key, version.size_bytes, ".model"))
                if report.test_set:
                    config.test_set_path = str(stack.enter_context(
                        _local_copy(report.test_set.storage_key, report.test_set.size_bytes, ".npz")))
                result = run_isolated(str(model_path), config).to_dict()
                result["baseline_source"] = baseline_source
        except ApplicationError as exc:  # storage unreachable: the run can be retried later
            result = {"outcome": "error", "summary": exc.message, "steps": [], "metrics": {}, "gates": []}
        tracing.annotate(**{"validation.outcome": result["outcome"]})
        return _finish(report, result, gates, baseline)


def _config(version: ModelVersion, gates: dict) -> ValidationConfig:
    return ValidationConfig(
        framework=version.ai_model.framework, detected_format=version.detected_format,
        format_details=version.format_details or {},
        expected_sha256=version.sha256, expected_size=version.size_bytes,
        declared_inputs=version.input_schema or [], declared_outputs=version.output_schema or [],
        symbolic_dims={}, warmup_runs=settings.VALIDATION_WARMUP_RUNS,
        benchmark_runs=settings.VALIDATION_BENCHMARK_RUNS, test_set_path=None,
        accuracy_metric=version.ai_model.accuracy_metric, gates=gates, baseline=None,
        limits=ResourceLimits(cpu_seconds=settings.VALIDATION_CPU_SECONDS,
                              wall_seconds=settings.VALIDATION_WALL_SECONDS, memory_mb=settings.VALIDATION_MEMORY_MB),
        intra_op_threads=settings.VALIDATION_INTRA_OP_THREADS,
    )


def _baseline_metrics(baseline: ValidationReport | None,
                      stack: contextlib.ExitStack) -> tuple[dict | None, str | None]:
    """The baseline's stored metrics when measured in this same environment, else the baseline measured now."""
    if baseline is None:
        return None, None
    here = environment(intra_op_threads=settings.VALIDATION_INTRA_OP_THREADS)
    if (baseline.result or {}).get("environment") == here:
        return baseline.result.get("metrics"), "stored report (same environment)"
    previous = baseline.version
    path = stack.enter_context(_local_copy(previous.storage_key, previous.size_bytes, ".baseline"))
    measured = run_isolated(str(path), _config(previous, {})).to_dict()
    if measured["outcome"] != "passed":
        return None, f"{previous.model_id} could not be re-measured here: {measured.get('summary', '')}"
    return measured["metrics"], f"re-measured here ({previous.model_id}; the stored report ran elsewhere)"


def _finish(report: ValidationReport, result: dict, gates: dict, baseline: ValidationReport | None):
    version = report.version
    status = ValidationReport.Status(result["outcome"])
    with transaction.atomic():
        ValidationReport.objects.filter(pk=report.pk).update(
            status=status, finished_at=timezone.now(), summary=result.get("summary", "")[:5000], result=result,
            gates_applied=gates, baseline=baseline,
        )
        latest = version.validation_reports.order_by("-requested_at", "-id").values_list("pk", flat=True).first()
        if latest == report.pk:
            model_version_status_change(version_id=version.pk, to=OUTCOME_STATUS[status])
    logger.info("model version validated", extra={"model_id": version.model_id, "outcome": status})
    report.refresh_from_db()
    return report


def model_version_approve(*, version: ModelVersion, actor, reason: str) -> ModelVersion:
    """An Admin ships a version validation could not pass: not executable here, or a failed gate overridden."""
    reason = (reason or "").strip()
    if len(reason) < 10:
        raise ApplicationError("Say why in at least 10 characters: the reason is kept in the audit trail.",
                               code="VALIDATION_ERROR", details=[{"field": "reason", "message": "Too short."}])
    if version.status not in (ModelVersion.Status.FAILED, ModelVersion.Status.NEEDS_APPROVAL):
        raise ConflictError(f"{version.model_id} is {version.status}; only failed or unverified versions need an "
                            "approval.", code="APPROVAL_NOT_NEEDED")
    ModelVersion.objects.filter(pk=version.pk).update(approved_by=actor, approved_at=timezone.now(),
                                                      approval_reason=reason)
    logger.warning("model version approved by an admin",
                   extra={"model_id": version.model_id, "actor": str(actor), "reason": reason})
    version.refresh_from_db()
    return version


def version_is_distributable(version: ModelVersion) -> bool:
    """Passed validation, or an Admin approved it; neither deprecated nor corrupt (models_app/shipping.py)."""
    return version_refusal(version) is None


def test_set_upload(*, ai_model, name: str, artifact, uploaded_by=None) -> TestSet:
    """Stores a labelled .npz test set like an artifact; a malformed one leaves nothing behind."""
    try:
        if artifact.size == 0:
            raise ApplicationError("The test set is empty.", code="INVALID_TEST_SET")
        if TestSet.objects.filter(ai_model=ai_model, name=name).exists():
            raise ConflictError(f"Model '{ai_model.name}' already has a test set named '{name}'.",
                                code="TEST_SET_EXISTS")
        artifact.commit()
        with artifact.store.open(artifact.key, artifact.size) as handle:
            arrays = npz_arrays(handle)
        test_set = TestSet(ai_model=ai_model, name=name, storage_key=artifact.key, sha256=artifact.sha256,
                           size_bytes=artifact.size, arrays=arrays, uploaded_by=uploaded_by)
        test_set.full_clean()
        test_set.save()
    except BaseException:
        artifact.discard()
        raise
    artifact.keep()
    return test_set
