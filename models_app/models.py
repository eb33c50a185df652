"""The model registry: AIModel, its ModelVersions and their artifacts, and the upload sessions that bring them."""

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$"
_PRERELEASE_ID = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    rf"(?:-({_PRERELEASE_ID}(?:\.{_PRERELEASE_ID})*))?$"
)
SHA256_PATTERN = r"^[0-9a-f]{64}$"

name_validator = RegexValidator(
    NAME_PATTERN,
    "Use 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit.",
)
semver_validator = RegexValidator(
    SEMVER_PATTERN, "Use semantic versioning MAJOR.MINOR.PATCH with an optional pre-release, e.g. 1.4.0 or 2.0.0-rc.1."
)
sha256_validator = RegexValidator(SHA256_PATTERN, "A SHA-256 checksum is 64 lowercase hexadecimal characters.")


TENSOR_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
                 "uint8", "uint16", "uint32", "uint64", "bool", "string")


def validate_tensor_schema(value) -> None:
    """A declared signature: [{"name": str, "dtype": one of TENSOR_DTYPES, "shape": [int >= 1 | "symbol" | null]}]."""
    if not isinstance(value, list):
        raise ValidationError("Must be a list of tensors: [{\"name\", \"dtype\", \"shape\"}].")
    seen: set[str] = set()
    for index, tensor in enumerate(value):
        where = f"tensor {index}"
        if not isinstance(tensor, dict) or set(tensor) - {"name", "dtype", "shape"}:
            raise ValidationError(f"{where}: must be an object with only name, dtype and shape.")
        name = tensor.get("name")
        if not isinstance(name, str) or not name or len(name) > 256:
            raise ValidationError(f"{where}: name must be a non-empty string of at most 256 characters.")
        if name in seen:
            raise ValidationError(f"{where}: duplicate tensor name {name!r}.")
        seen.add(name)
        if tensor.get("dtype") not in TENSOR_DTYPES:
            raise ValidationError(f"{where} ({name}): dtype must be one of {', '.join(TENSOR_DTYPES)}.")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or len(shape) > 16:
            raise ValidationError(f"{where} ({name}): shape must be a list of at most 16 dimensions.")
        for dim in shape:
            valid_int = isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1
            valid_symbol = isinstance(dim, str) and 0 < len(dim) <= 64
            if not (valid_int or valid_symbol or dim is None):
                raise ValidationError(
                    f"{where} ({name}): each dimension is a positive integer, a symbolic name or null; got {dim!r}."
                )


def validate_input_profiles(value) -> None:
    """Input profiles as validation/profiles.py reads them (checked against the model by the API, not here)."""
    from models_app.validation.profiles import ProfileError, check_profiles

    try:
        check_profiles(value)
    except ProfileError as exc:
        raise ValidationError([f"{d['field']}: {d['message']}" for d in exc.details]) from exc


def validate_output_tolerances(value) -> None:
    """{output name or "*": {"max_abs", "max_rel", "min_cosine"}}, each a non-negative number or null."""
    keys = {"max_abs", "max_rel", "min_cosine"}
    if not isinstance(value, dict) or not all(
            isinstance(name, str) and isinstance(tolerance, dict) and set(tolerance) <= keys
            and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0)
                    for v in tolerance.values())
            for name, tolerance in value.items()):
        raise ValidationError('Must map output names (or "*") to {"max_abs", "max_rel", "min_cosine"}, each a '
                              "non-negative number or null.")


class Framework(models.TextChoices):
    ONNX = "onnx", "ONNX"
    TENSORFLOW = "tensorflow", "TensorFlow SavedModel"
    TFLITE = "tflite", "TensorFlow Lite"
    PYTORCH = "pytorch", "PyTorch"
    COREML = "coreml", "Core ML"


class ArtifactFormat(models.TextChoices):
    ONNX = "onnx", "ONNX model"
    ZIP_PACKAGE = "zip_package", "ZIP model package"
    TFLITE = "tflite", "TFLite flatbuffer"
    SAVEDMODEL = "savedmodel", "TensorFlow SavedModel archive"
    PYTORCH = "pytorch", "PyTorch archive"
    COREML = "coreml", "Core ML model"


class Task(models.TextChoices):
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    REGRESSION = "regression"
    GENERATION = "generation"
    OTHER = "other"


class Accelerator(models.TextChoices):
    NONE = "none", "None (CPU)"
    GPU = "gpu", "GPU"
    NPU = "npu", "NPU"
    TPU = "tpu", "TPU"


class AIModel(models.Model):
    """A named model; its artifacts live in its versions."""

    name = models.CharField(max_length=64, unique=True, validators=[name_validator])
    description = models.TextField(blank=True, max_length=10_000)
    framework = models.CharField(max_length=16, choices=Framework.choices)
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.OTHER)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_models")
    # Quality gates for this model over the defaults: {"max_latency_p99_ms": 50, ...,
    # "device_classes": {"edge-camera": {"max_latency_p99_ms": 30}}}; accuracy metric and test set defaults.
    quality_gates = models.JSONField(default=dict, blank=True)
    accuracy_metric = models.CharField(max_length=32, default="top1")
    # How the model is called (models_app/validation/profiles.py): [{"name", "dims", "inputs", "feedback",
    # "samples"}]; every version is validated at each of them unless it declares its own.
    input_profiles = models.JSONField(default=list, blank=True, validators=[validate_input_profiles])
    # Per output name (or "*"): {"max_abs", "max_rel", "min_cosine"}: expected outputs and baseline agreement.
    output_tolerances = models.JSONField(default=dict, blank=True, validators=[validate_output_tolerances])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "AI model"
        constraints = [
            models.CheckConstraint(condition=Q(name__regex=NAME_PATTERN), name="aimodel_name_format"),
            models.CheckConstraint(condition=Q(framework__in=Framework.values), name="aimodel_framework_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One uploaded artifact of a model, addressed as `{name}-{version}`."""

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        VALIDATING = "validating"
        PASSED = "passed"
        FAILED = "failed"
        # Stored and checked, but its framework cannot be executed here: an Admin must approve it.
        NEEDS_APPROVAL = "needs_approval"
        DEPRECATED = "deprecated"
        # The stored bytes no longer hash to sha256 (found by the integrity scrub): never shipped again.
        CORRUPT = "corrupt"

    ai_model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=64, validators=[semver_validator])
    model_id = models.CharField(max_length=129, unique=True, editable=False)
    major = models.PositiveIntegerField(editable=False)
    minor = models.PositiveIntegerField(editable=False)
    patch = models.PositiveIntegerField(editable=False)
    prerelease = models.CharField(max_length=64, blank=True, editable=False)
    is_release = models.BooleanField(editable=False)
    # Semantic-version precedence as one byte-comparable key, computed by the database (the SQL function
    # semver_key, migration 0006_semver_order) for every row however it is written. ORDER BY precedence and
    # Python's `a.precedence < b.precedence` agree: rc.9 < rc.10 < the release, numeric identifiers below
    # alphanumeric ones, a shorter set of identifiers first. Compare versions only through it.
    precedence = models.GeneratedField(
        expression=models.Func(models.F("major"), models.F("minor"), models.F("patch"), models.F("prerelease"),
                               function="semver_key", output_field=models.CharField()),
        output_field=models.CharField(max_length=400, db_collation="C"), db_persist=True, editable=False)

    storage_key = models.CharField(max_length=512, unique=True)
    sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    size_bytes = models.BigIntegerField(validators=[MinValueValidator(1)])
    detected_format = models.CharField(max_length=16, choices=ArtifactFormat.choices)
    format_details = models.JSONField(default=dict, blank=True)
    original_filename = models.CharField(max_length=255, blank=True)

    input_schema = models.JSONField(default=list, blank=True, validators=[validate_tensor_schema])
    output_schema = models.JSONField(default=list, blank=True, validators=[validate_tensor_schema])
    target_device_type = models.CharField(max_length=64, blank=True)
    min_memory_mb = models.PositiveIntegerField(null=True, blank=True)
    accelerator = models.CharField(max_length=8, choices=Accelerator.choices, default=Accelerator.NONE)
    # This version's own input profiles; when non-empty they replace the model's.
    input_profiles = models.JSONField(default=list, blank=True, validators=[validate_input_profiles])

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED, db_index=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="uploaded_versions")
    uploaded_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deprecated_at = models.DateTimeField(null=True, blank=True)
    # An Admin's recorded decision to ship a version validation could not pass (not executable here, or a
    # failed gate overridden); audited in ValidationReport history and the admin log.
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="approved_versions")
    approved_at = models.DateTimeField(null=True, blank=True)
    approval_reason = models.TextField(blank=True, max_length=2000)
    # W3C context of the upload's model.upload span (empty when tracing was off): distributions link to it.
    traceparent = models.CharField(max_length=55, blank=True, editable=False)
    # Integrity scrub (models_app/scrub.py): when the stored bytes were last re-hashed, and what it found wrong.
    scrubbed_at = models.DateTimeField(null=True, blank=True, editable=False)
    scrub_error = models.TextField(blank=True, max_length=2000, editable=False)
    # Whether HotSwap itself hashed these bytes to `sha256`. The multipart POST hashes them as they arrive; an
    # upload session's parts go straight to S3, so its version starts unverified until the validation worker
    # hashes the object (models_app/shipping.py never ships an unverified version).
    sha256_verified = models.BooleanField(default=True, editable=False)

    class Meta:
        ordering = ["ai_model__name", "-precedence"]
        indexes = [models.Index(fields=["ai_model", "precedence"], name="version_semver_order_idx"),
                   models.Index(fields=["scrubbed_at"], name="version_scrubbed_idx")]
        constraints = [
            models.UniqueConstraint(fields=["ai_model", "version"], name="modelversion_unique_version"),
            models.CheckConstraint(condition=Q(sha256__regex=SHA256_PATTERN), name="modelversion_sha256_format"),
            models.CheckConstraint(condition=Q(size_bytes__gte=1), name="modelversion_size_positive"),
            models.CheckConstraint(condition=Q(version__regex=SEMVER_PATTERN), name="modelversion_semver"),
            models.CheckConstraint(condition=Q(status__in=["uploaded", "validating", "passed", "failed",
                                                           "needs_approval", "deprecated", "corrupt"]),
                                   name="modelversion_status_valid"),
        ]
        permissions = [
            ("upload_modelversion", "Can upload model versions"),
            ("validate_modelversion", "Can request validation of model versions"),
            ("deprecate_modelversion", "Can deprecate model versions"),
            ("download_modelversion", "Can download model artifacts"),
            ("approve_modelversion", "Can approve or override a validation result"),
        ]

    def __str__(self) -> str:
        return self.model_id


class TestSet(models.Model):
    """A labelled test set (.npz with inputs and labels) for a model's accuracy step, stored like artifacts."""

    __test__ = False  # not a pytest test class, despite its name

    ai_model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="test_sets")
    name = models.CharField(max_length=100)
    storage_key = models.CharField(max_length=512, unique=True)
    sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    size_bytes = models.BigIntegerField(validators=[MinValueValidator(1)])
    arrays = models.JSONField(default=dict, blank=True, help_text="array name -> shape and dtype")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-uploaded_at"]
        constraints = [models.UniqueConstraint(fields=["ai_model", "name"], name="testset_unique_name")]

    def __str__(self) -> str:
        return f"{self.ai_model.name}/{self.name}"


class ValidationReport(models.Model):
    """One validation run of a version: its request, every step's outcome, metrics, gates and environment."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        PASSED = "passed"
        FAILED = "failed"
        NOT_EXECUTED = "not_executed"
        # Ran, but at guessed shapes: latency and throughput decided nothing (an Admin approves, or a profile).
        NEEDS_APPROVAL = "needs_approval"
        ERROR = "error"

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="validation_reports")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    test_set = models.ForeignKey(TestSet, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    gate_overrides = models.JSONField(default=dict, blank=True)
    gates_applied = models.JSONField(default=dict, blank=True)
    baseline = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    summary = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True, help_text="steps, metrics, baseline deltas, gates, environment")

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["version", "-requested_at"], name="report_version_time_idx")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["pending", "running", "passed", "failed", "not_executed",
                                                           "needs_approval", "error"]),
                                   name="validationreport_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.version.model_id} #{self.pk} {self.status}"


class MultipartAbort(models.Model):
    """A multipart upload whose abort could not run (S3 unreachable): the cleanup task retries it."""

    bucket = models.CharField(max_length=63)
    key = models.CharField(max_length=512)
    upload_id = models.CharField(max_length=1024)
    recorded_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, max_length=2000)

    class Meta:
        ordering = ["recorded_at", "id"]
        constraints = [models.UniqueConstraint(fields=["bucket", "key", "upload_id"], name="multipartabort_unique")]

    def __str__(self) -> str:
        return f"{self.key} ({self.upload_id[:12]}…)"


class UploadSession(models.Model):
    """A resumable upload: parts go straight to storage (S3 multipart, or part files); complete() makes the version.

    The one state machine of a session lives in models_app/upload_sessions.py.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        COMPLETED = "completed"
        ABORTED = "aborted"
        EXPIRED = "expired"

    class Storage(models.TextChoices):
        S3 = "s3"
        LOCAL = "local"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="upload_sessions")
    name = models.CharField(max_length=64, validators=[name_validator])
    version = models.CharField(max_length=64, validators=[semver_validator])
    size = models.BigIntegerField(validators=[MinValueValidator(1)])
    sha256 = models.CharField(max_length=64, validators=[sha256_validator])
    filename = models.CharField(max_length=255, blank=True)
    # What POST /api/v1/models takes besides the file (framework, description, tags, schemas, ...).
    metadata = models.JSONField(default=dict, blank=True)
    part_size = models.BigIntegerField()
    storage = models.CharField(max_length=8, choices=Storage.choices)
    storage_key = models.CharField(max_length=512, unique=True)
    upload_id = models.CharField(max_length=1024, blank=True, help_text="S3's multipart UploadId (S3 only)")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    model_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A re-run finds the open session to resume instead of starting a second one.
            models.UniqueConstraint(fields=["owner", "name", "version", "sha256", "size"],
                                    condition=Q(status="open"), name="uploadsession_one_open"),
            models.CheckConstraint(condition=Q(status__in=["open", "completed", "aborted", "expired"]),
                                   name="uploadsession_status_valid"),
            models.CheckConstraint(condition=Q(size__gte=1), name="uploadsession_size_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name}-{self.version} upload {self.id} ({self.status})"

    @property
    def part_count(self) -> int:
        return -(-self.size // self.part_size)

    def part_bytes(self, number: int) -> int:
        """The exact size of part `number` (1-based): every part is part_size but the last."""
        return min(self.part_size, self.size - (number - 1) * self.part_size)
