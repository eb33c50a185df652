"""Validation runs: request, claim, execute in an isolated child, record the report, decide the version's status."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from hotswap.exceptions import ApplicationError, ConflictError
from hotswap.observability import tracing
from models_app.models import ModelVersion, TestSet, ValidationReport, validate_output_tolerances
from models_app.shipping import model_version_status_change, version_refusal
from models_app.storage import artifact_store
from models_app.testsets import arrays_problems, npz_arrays
from models_app.validation import ResourceLimits, ValidationConfig, run_isolated
from models_app.validation.profiles import ProfileError, check_profiles
from models_app.validation.result import STEP_NAMES, Outcome, PipelineResult, StepResult, StepStatus

logger = logging.getLogger(__name__)

_COPY_CHUNK = 4 * 1024 * 1024

GATE_NAMES = set(settings.VALIDATION_GATES)
# Report outcome → version status. A newer request supersedes older ones; only the latest decides.
OUTCOME_STATUS = {
    ValidationReport.Status.PASSED: ModelVersion.Status.PASSED,
    ValidationReport.Status.FAILED: ModelVersion.Status.FAILED,
    ValidationReport.Status.ERROR: ModelVersion.Status.FAILED,
    ValidationReport.Status.NOT_EXECUTED: ModelVersion.Status.NEEDS_APPROVAL,
    ValidationReport.Status.NEEDS_APPROVAL: ModelVersion.Status.NEEDS_APPROVAL,
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


def _device_class(version: ModelVersion) -> dict:
    classes = (version.ai_model.quality_gates or {}).get("device_classes", {}) or {}
    return dict(classes.get(version.target_device_type, {})) if version.target_device_type else {}


def gates_for(version: ModelVersion, overrides: dict | None = None) -> dict:
    """Defaults ← the model's gates ← its device class's gates ← this request's overrides."""
    model_gates = dict(version.ai_model.quality_gates or {})
    model_gates.pop("device_classes", None)
    gates = {**settings.VALIDATION_GATES, **model_gates}
    device_class = _device_class(version)
    device_class.pop("profile", None)
    gates.update(device_class)
    gates.update(overrides or {})
    return gates


def known_signature(version: ModelVersion) -> tuple[list | None, list | None]:
    """The version's inputs and outputs as its last validation read them from the model, else as declared."""
    for result in version.validation_reports.exclude(result={}).values_list("result", flat=True)[:5]:
        step = next((s for s in result.get("steps", []) if s.get("name") == "signature"), None)
        if step and step.get("data", {}).get("inputs") is not None:
            return step["data"]["inputs"], step["data"]["outputs"]
    return version.input_schema or None, version.output_schema or None


def input_profiles_check(profiles, *, ai_model, version: ModelVersion | None = None) -> list:
    """The profiles checked against the model (its latest version when none is named); 400 naming each problem."""
    version = version or ai_model.versions.order_by("-uploaded_at", "-id").first()
    inputs, outputs = known_signature(version) if version else (None, None)
    sample_sets = dict(ai_model.test_sets.values_list("name", "arrays"))
    try:
        checked = check_profiles(profiles, inputs=inputs, outputs=outputs, memory_mb=settings.VALIDATION_MEMORY_MB,
                                 sample_sets=set(sample_sets))
        unfit = [{"field": f"input_profiles[{index}].samples",
                  "message": f"Test set {profile['samples']!r}: {problem}."}
                 for index, profile in enumerate(checked) if profile.get("samples") in sample_sets
                 for problem in arrays_problems(sample_sets[profile["samples"]], inputs, outputs)]
        if unfit:
            raise ProfileError(unfit)
        return checked
    except ProfileError as exc:
        raise ApplicationError(f"The input profiles do not fit {version.model_id if version else ai_model.name}: "
                               f"{exc}", code="VALIDATION_ERROR", details=exc.details) from exc


def input_profiles_declare(*, ai_model, profiles: list, version: ModelVersion | None = None):
    """Stores the profiles on the version (replacing the model's for it) or on the model; returns the owner."""
    owner = version or ai_model
    owner.input_profiles = input_profiles_check(profiles, ai_model=ai_model, version=version)
    owner.save(update_fields=["input_profiles"])
    logger.info("input profiles declared", extra={"owner": str(owner), "profiles": [p["name"] for p in profiles]})
    return owner


def output_tolerances_set(*, ai_model, tolerances: dict) -> dict:
    """Stores a model's output tolerances (expected outputs, agreement with the baseline); 400 naming each problem."""
    version = ai_model.versions.order_by("-uploaded_at", "-id").first()
    _, outputs = known_signature(version) if version else (None, None)
    names = {tensor["name"] for tensor in outputs or []}
    unknown = sorted(set(tolerances) - names - {"*"}) if names else []
    if unknown:
        raise ApplicationError(f"{ai_model.name} has no output(s) {', '.join(unknown)} (outputs: "
                               f"{', '.join(sorted(names))}; \"*\" sets every output's).", code="VALIDATION_ERROR",
                               details=[{"field": f"output_tolerances.{name}", "message": "Unknown output."}
                                        for name in unknown])
    try:
        validate_output_tolerances(tolerances)
    except DjangoValidationError as exc:
        raise ApplicationError(exc.messages[0], code="VALIDATION_ERROR",
                               details=[{"field": "output_tolerances", "message": exc.messages[0]}]) from exc
    ai_model.output_tolerances = tolerances
    ai_model.save(update_fields=["output_tolerances"])
    return tolerances


def effective_profiles(version: ModelVersion) -> list:
    """The version's own profiles, else its model's; the one its device class names (quality_gates
    device_classes.<type>.profile) first: the report's headline figures and gates are that profile's."""
    profiles = list(version.input_profiles or version.ai_model.input_profiles or [])
    named = _device_class(version).get("profile")
    return sorted(profiles, key=lambda profile: profile.get("name") != named) if named else profiles


def validation_request(*, version: ModelVersion, requested_by=None, test_set: TestSet | None = None,
                       gate_overrides: dict | None = None, input_profiles: list | None = None,
                       queue: bool = True) -> ValidationReport:
    """Creates a pending report and queues it; a pending or running one for the version is returned instead.

    input_profiles: declared as the version's own first (input_profiles_declare), so one call re-validates at them.
    """
    if version.status == ModelVersion.Status.DEPRECATED:
        raise ConflictError(f"{version.model_id} is deprecated; it is not validated again.", code="VERSION_DEPRECATED")
    if version.status == ModelVersion.Status.CORRUPT:
        raise ConflictError(f"{version.model_id}'s stored artifact was altered; delete it and upload it again.",
                            code="ARTIFACT_CORRUPT")
    if test_set is not None and test_set.ai_model_id != version.ai_model_id:
        raise ApplicationError("That test set belongs to another model.", code="VALIDATION_ERROR",
                               details=[{"field": "test_set", "message": "Belongs to another model."}])
    gates_validate(gate_overrides or {})
    if input_profiles is not None:
        input_profiles_declare(ai_model=version.ai_model, version=version, profiles=input_profiles)
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(pk=version.pk).first()  # one request at a time per version
        active = version.validation_reports.filter(
            status__in=[ValidationReport.Status.PENDING, ValidationReport.Status.RUNNING]).first()
        if active:
            return active
        report = ValidationReport.objects.create(
            version=version, requested_by=requested_by, test_set=test_set,
            gate_overrides=gate_overrides or {},
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
def _local_copy(key: str, size: int, suffix: str, digest=None) -> Iterator[Path]:
    """The stored object as a local file (the child needs a path); streamed, removed afterwards.

    `digest` (a hashlib object) is fed every byte as this process reads them.
    """
    store = artifact_store()
    if not store.is_s3:
        path = Path(store.storage.path(key))
        if digest is not None:
            with open(path, "rb") as source:
                while chunk := source.read(_COPY_CHUNK):
                    digest.update(chunk)
        yield path
        return
    directory = Path(tempfile.mkdtemp(prefix="hotswap-validate-"))
    try:
        path = directory / f"artifact{suffix}"
        with store.open(key, size) as source, open(path, "wb") as target:
            while chunk := source.read(_COPY_CHUNK):
                target.write(chunk)
                if digest is not None:
                    digest.update(chunk)
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
                # An upload session's bytes never passed through HotSwap: hash them here, in the worker, not in
                # the child that parses the (untrusted) model, and before anything else is spent on them.
                digest = None if version.sha256_verified else hashlib.sha256()
                model_path = stack.enter_context(_local_copy(version.storage_key, version.size_bytes, ".model",
                                                             digest))
                if digest is not None and (rejected := _sha256_verify(version, digest.hexdigest())):
                    return _finish(report, rejected, gates, baseline)
                if report.test_set:
                    config.test_set_path = str(stack.enter_context(
                        _local_copy(report.test_set.storage_key, report.test_set.size_bytes, ".npz")))
                config.profiles = _resolved_profiles(version, stack)
                baseline_source = _baseline_file(config, baseline, stack)
                result = run_isolated(str(model_path), config).to_dict()
                result["baseline_source"] = baseline_source
        except ApplicationError as exc:  # storage unreachable: the run can be retried later
            result = {"outcome": "error", "summary": exc.message, "steps": [], "metrics": {}, "gates": []}
        tracing.annotate(**{"validation.outcome": result["outcome"]})
        return _finish(report, result, gates, baseline)


def _sha256_verify(version: ModelVersion, sha256: str) -> dict | None:
    """Marks the version verified when its bytes hash to the declared SHA-256; otherwise deletes the object, marks
    the version corrupt (never shipped, never approved) and gives the report that says why."""
    if sha256 == version.sha256:
        ModelVersion.objects.filter(pk=version.pk).update(sha256_verified=True)
        return None
    reason = (f"the uploaded bytes hash to sha256 {sha256}, not the declared {version.sha256}: a part was corrupted "
              "or replaced on the way; the stored object was deleted. Upload it again under a new version (or once an "
              "Admin deleted this one).")
    try:
        artifact_store().delete(version.storage_key)
    except ApplicationError:
        logger.error("could not delete the mismatched artifact %s", version.storage_key)
    model_version_status_change(version_id=version.pk, to=ModelVersion.Status.CORRUPT, scrub_error=reason[:2000])
    integrity = StepResult("integrity", StepStatus.FAILED, 0.0, reason,
                           {"sha256": sha256, "expected_sha256": version.sha256, "size": version.size_bytes})
    skipped = [StepResult(name, StepStatus.NOT_EXECUTED, 0.0, "not run: the artifact failed its integrity check")
               for name in STEP_NAMES if name != "integrity"]
    return PipelineResult(outcome=Outcome.FAILED, summary=f"failed: integrity: {reason}",
                          steps=[integrity, *skipped]).to_dict()


def _resolved_profiles(version: ModelVersion, stack: contextlib.ExitStack) -> list[dict]:
    """The version's profiles, each test set named as "samples" copied here as "samples_path"."""
    resolved = []
    for profile in effective_profiles(version):
        profile = dict(profile)
        if name := profile.pop("samples", None):
            sample_set = version.ai_model.test_sets.filter(name=name).first()
            if sample_set is None:  # deleted since the declaration: the benchmark step says so
                profile["samples_path"] = f"/nonexistent/test set {name!r} no longer exists"
            else:
                profile["samples_path"] = str(stack.enter_context(
                    _local_copy(sample_set.storage_key, sample_set.size_bytes, ".npz")))
        resolved.append(profile)
    return resolved


def _baseline_file(config: ValidationConfig, baseline: ValidationReport | None,
                   stack: contextlib.ExitStack) -> str | None:
    """The previous version's model file for the child to measure side by side; why not, when it cannot be."""
    if baseline is None:
        return None
    previous = baseline.version
    if previous.detected_format != "onnx":
        return f"{previous.model_id} is a {previous.detected_format}: only single-file ONNX baselines are measured"
    config.baseline_path = str(stack.enter_context(_local_copy(previous.storage_key, previous.size_bytes,
                                                               ".baseline.onnx")))
    config.baseline_model_id = previous.model_id
    return f"{previous.model_id}, measured side by side in the same process"


def _config(version: ModelVersion, gates: dict) -> ValidationConfig:
    return ValidationConfig(
        framework=version.ai_model.framework, detected_format=version.detected_format,
        format_details=version.format_details or {},
        expected_sha256=version.sha256, expected_size=version.size_bytes,
        declared_inputs=version.input_schema or [], declared_outputs=version.output_schema or [],
        warmup_runs=settings.VALIDATION_WARMUP_RUNS,
        benchmark_runs=settings.VALIDATION_BENCHMARK_RUNS, test_set_path=None,
        accuracy_metric=version.ai_model.accuracy_metric, gates=gates,
        output_tolerances=version.ai_model.output_tolerances or {},
        limits=ResourceLimits(cpu_seconds=settings.VALIDATION_CPU_SECONDS,
                              wall_seconds=settings.VALIDATION_WALL_SECONDS, memory_mb=settings.VALIDATION_MEMORY_MB),
        intra_op_threads=settings.VALIDATION_INTRA_OP_THREADS,
    )


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
        latest = ai_model.versions.order_by("-uploaded_at", "-id").first()
        problems = arrays_problems(arrays, *known_signature(latest)) if latest else []
        if problems:
            raise ApplicationError(f"The test set does not fit {latest.model_id}: {'; '.join(problems)}.",
                                   code="INVALID_TEST_SET",
                                   details=[{"field": "artifact", "message": problem} for problem in problems])
        test_set = TestSet(ai_model=ai_model, name=name, storage_key=artifact.key, sha256=artifact.sha256,
                           size_bytes=artifact.size, arrays=arrays, uploaded_by=uploaded_by)
        test_set.full_clean()
        test_set.save()
    except BaseException:
        artifact.discard()
        raise
    artifact.keep()
    return test_set
