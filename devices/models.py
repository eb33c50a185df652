"""The fleet: devices, their credentials and enrollment keys, desired state, install reports, telemetry."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex, GinIndex, OpClass
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Upper

from hotswap_device.protocol import LATENCY_BUCKETS_MS  # noqa: F401 (re-exported for the server's code)

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
device_id_validator = RegexValidator(
    DEVICE_ID_PATTERN, "Use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit."
)
percent = [MinValueValidator(0.0), MaxValueValidator(100.0)]



class Device(models.Model):
    """One edge device, identified by the fleet's own device_id."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        OFFLINE = "offline"
        DECOMMISSIONED = "decommissioned"

    device_id = models.CharField(max_length=64, unique=True, validators=[device_id_validator])
    name = models.CharField(max_length=128, blank=True)
    device_type = models.CharField(max_length=64, blank=True, db_index=True)
    region = models.CharField(max_length=64, blank=True, db_index=True)
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)

    cpu_cores = models.PositiveSmallIntegerField(null=True, blank=True)
    memory_mb = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    storage_gb = models.PositiveIntegerField(null=True, blank=True)
    gpu = models.CharField(max_length=64, blank=True, help_text="GPU model, empty when there is none")

    cpu_percent = models.FloatField(null=True, blank=True, validators=percent)
    memory_percent = models.FloatField(null=True, blank=True, validators=percent)
    disk_percent = models.FloatField(null=True, blank=True, validators=percent)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+")
    enrollment_key = models.ForeignKey("EnrollmentKey", null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="devices")
    last_seen = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["device_id"]
        indexes = [
            GinIndex(fields=["tags"], name="device_tags_gin"),
            # The fleet list's filters and search (devices.selectors.DeviceFilter) stay index scans at 100k devices.
            models.Index(OpClass(Upper("device_id"), name="text_pattern_ops"), name="device_id_prefix_idx"),
            models.Index(OpClass(Upper("name"), name="text_pattern_ops"), name="device_name_prefix_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(device_id__regex=DEVICE_ID_PATTERN), name="device_id_format"),
            models.CheckConstraint(condition=Q(status__in=["active", "offline", "decommissioned"]),
                                   name="device_status_valid"),
        ]
        permissions = [("set_desired_version", "Can set the model version a device should run")]

    def __str__(self) -> str:
        return self.device_id


class DeviceCredential(models.Model):
    """A device's secret (`hsd_<prefix>_<secret>`), stored as a SHA-256 hash; shown once when issued."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.device_id}:{self.prefix}"


class EnrollmentKey(models.Model):
    """A fleet key devices enroll themselves with (`hse_<prefix>_<secret>`); revocable, may expire or run out."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(max_uses__isnull=True) | Q(uses__lte=models.F("max_uses")),
                                   name="enrollmentkey_uses_within_limit"),
        ]

    def __str__(self) -> str:
        return self.name


class ModelSlot(models.Model):
    """One model on one device: the version it should run (its desired state) and the version it says it runs.

    A device runs several models side by side, each with its own versions, rollouts and rollbacks; every
    slot has its own `sequence`, bumped by each change of its desired state (devices.services.desired_state
    is the one place that writes it). Desired state: `version` (install it), `remove` (unload the model),
    or neither (nothing in particular: keep what runs). A slot also exists for a model the device reports
    running that it was never offered. Rollouts set it for their devices; until then operators set it by hand.
    A rollback is only a change of desired state back to an earlier version with `rollback=True`.
    """

    class State(models.TextChoices):
        """Where a slot stands, derived from its desired and running state (ModelSlot.state)."""

        IN_SYNC = "in_sync", "In sync"  # runs the desired version
        INSTALLING = "installing", "Installing"  # the device has not reported the desired version running yet
        REFUSED = "refused", "Refused"  # the device refused (or failed) the current desired state: refused_reason
        REMOVING = "removing", "Removing"  # to be removed, still reported running
        REMOVED = "removed", "Removed"  # removed: nothing runs
        UNMANAGED = "unmanaged", "Not managed"  # nothing desired: the device runs what it has

    # No index of their own: one_slot_per_device_model leads with device, slot_model_running_idx with ai_model.
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="slots", db_index=False)
    ai_model = models.ForeignKey("models_app.AIModel", on_delete=models.CASCADE, related_name="slots",
                                 db_index=False)

    # Desired state.
    version = models.ForeignKey("models_app.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="desired_on")
    remove = models.BooleanField(default=False, help_text="the device should unload and delete this model")
    rollback = models.BooleanField(default=False)
    sequence = models.PositiveBigIntegerField(default=0)
    source = models.CharField(max_length=64, blank=True, help_text="manual, or the distribution that set it")
    reason = models.CharField(max_length=500, blank=True)
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    set_at = models.DateTimeField(null=True, blank=True)
    # W3C trace context of the change, handed to the device so its report links back to it.
    traceparent = models.CharField(max_length=55, blank=True)

    # Running state: what the device last said it runs of this model (the heartbeat flush writes it).
    running_version = models.ForeignKey("models_app.ModelVersion", null=True, blank=True,
                                        on_delete=models.SET_NULL, related_name="running_slots")
    reported_version = models.CharField(max_length=64, blank=True)
    reported_sha256 = models.CharField(max_length=64, blank=True)
    # Since when: the heartbeat that changed it (the device's last_seen says when it last reported at all).
    reported_at = models.DateTimeField(null=True, blank=True)

    # The device's last word on this slot's current desired state when it did not take it (refused, failed).
    refused_sequence = models.PositiveBigIntegerField(null=True, blank=True)
    refused_reason = models.CharField(max_length=2000, blank=True)

    class Meta:
        ordering = ["device", "ai_model"]
        constraints = [
            models.UniqueConstraint(fields=["device", "ai_model"], name="one_slot_per_device_model"),
            models.CheckConstraint(condition=Q(remove=False) | Q(version__isnull=True), name="slot_remove_or_version"),
        ]
        indexes = [
            # Fleet filters and rollout targets by model and version stay index scans at 1M devices.
            models.Index(fields=["ai_model", "running_version"], name="slot_model_running_idx"),
        ]

    def __str__(self) -> str:
        wanted = "remove" if self.remove else (self.version_id or "keep")
        return f"{self.device_id}/{self.ai_model_id} -> {wanted} (#{self.sequence})"

    @property
    def state(self) -> str:
        if self.sequence and self.refused_sequence == self.sequence:
            return self.State.REFUSED
        runs = self.running_version_id is not None or bool(self.reported_version)
        if self.remove:
            return self.State.REMOVING if runs else self.State.REMOVED
        if self.version_id is None:
            return self.State.UNMANAGED
        return self.State.IN_SYNC if self.running_version_id == self.version_id else self.State.INSTALLING


class InstallReport(models.Model):
    """A device's account of one install attempt (installed, active, failed, refused, rolled back) or removal."""

    class Status(models.TextChoices):
        DOWNLOADING = "downloading"
        INSTALLED = "installed"
        ACTIVE = "active"
        FAILED = "failed"
        REFUSED = "refused"
        ROLLED_BACK = "rolled_back"
        REMOVED = "removed"  # the model was unloaded and deleted (a removal's answer)

    # No index of its own: install_device_time_idx and install_report_once lead with device.
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="install_reports", db_index=False)
    version = models.ForeignKey("models_app.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="install_reports")
    model_name = models.CharField(max_length=64)
    model_version = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.CharField(max_length=2000, blank=True)
    sequence = models.PositiveBigIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    reported_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    traceparent = models.CharField(max_length=55, blank=True)

    class Meta:
        ordering = ["-reported_at"]
        indexes = [models.Index(fields=["device", "-reported_at"], name="install_device_time_idx")]
        constraints = [
            # A report's identity (PROTOCOL.md §3): a resend is not stored again. `at` is part of it because
            # a device may retry a failed install under the same sequence, and each attempt is news.
            models.UniqueConstraint(fields=["device", "model_name", "model_version", "status", "sequence",
                                            "reported_at"], nulls_distinct=False, name="install_report_once"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.model_name}-{self.model_version} {self.status}"


class MetricWindow(models.Model):
    """Inference metrics one device measured for one model version over [window_start, window_end)."""

    # No index of their own (each would cost every window stored): metric_window_once and
    # metric_device_time_idx lead with device, metric_version_time_idx with version.
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="metric_windows", db_index=False)
    version = models.ForeignKey("models_app.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="metric_windows", db_index=False)
    model_name = models.CharField(max_length=64)
    model_version = models.CharField(max_length=64)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    inference_count = models.PositiveIntegerField()
    error_count = models.PositiveIntegerField()
    latency_p50_ms = models.FloatField()
    latency_p95_ms = models.FloatField()
    latency_p99_ms = models.FloatField()
    latency_histogram = ArrayField(models.PositiveIntegerField(), null=True, blank=True,
                                   help_text="counts per LATENCY_BUCKETS_MS bucket, plus one open bucket")
    accuracy = models.FloatField(null=True, blank=True)
    labelled_count = models.PositiveIntegerField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-window_end"]
        indexes = [
            models.Index(fields=["version", "window_end"], name="metric_version_time_idx"),
            models.Index(fields=["device", "-window_end"], name="metric_device_time_idx"),
            # Windows arrive in received_at order: a block range index finds the latest ones (the rollup's
            # watermark) at a fraction of a B-tree's cost per window stored.
            BrinIndex(fields=["received_at"], name="metric_received_brin"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(window_end__gt=models.F("window_start")), name="metric_window_order"),
            models.CheckConstraint(condition=Q(error_count__lte=models.F("inference_count")),
                                   name="metric_errors_within_count"),
            models.CheckConstraint(condition=Q(accuracy__isnull=True) | Q(accuracy__gte=0, accuracy__lte=1),
                                   name="metric_accuracy_range"),
            # A window's identity (PROTOCOL.md §3): a resend, or a copy in the same check-in, is not stored again.
            models.UniqueConstraint(fields=["device", "model_name", "model_version", "window_start"],
                                    name="metric_window_once"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.model_name}-{self.model_version} {self.window_start:%H:%M}"


class MetricWindowBatch(models.Model):
    """The receipt of one chunk of buffered metric windows, written in the transaction that stored them.

    A flush that died after the commit but before deleting the chunk from Redis finds it here next time
    and does not store it again. Pruned with the raw windows.
    """

    key = models.CharField(max_length=100, unique=True, help_text="the Redis batch's id and the chunk's offset")
    checkins = models.PositiveIntegerField(help_text="check-ins in the chunk")
    windows = models.PositiveIntegerField(default=0, help_text="windows stored")
    flushed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.windows} windows"


class MetricRollup(models.Model):
    """Per-minute sums of metric windows by version, region and device type: fleet-wide aggregates stay fast.

    Percentiles cannot be summed: the rollup keeps count-weighted sums of the reported p50/p95/p99
    (an approximation) and the merged fixed-bucket histogram (exact up to bucket width).
    """

    version = models.ForeignKey("models_app.ModelVersion", on_delete=models.CASCADE, related_name="metric_rollups")
    region = models.CharField(max_length=64, blank=True)
    device_type = models.CharField(max_length=64, blank=True)
    bucket_start = models.DateTimeField()
    window_count = models.PositiveIntegerField(default=0)
    device_count = models.PositiveIntegerField(default=0)
    inference_count = models.BigIntegerField(default=0)
    error_count = models.BigIntegerField(default=0)
    latency_p50_weighted = models.FloatField(default=0)
    latency_p95_weighted = models.FloatField(default=0)
    latency_p99_weighted = models.FloatField(default=0)
    latency_p99_max = models.FloatField(default=0)
    latency_histogram = ArrayField(models.BigIntegerField(), null=True, blank=True)
    accuracy_weighted = models.FloatField(default=0)
    labelled_count = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["bucket_start"]
        constraints = [
            models.UniqueConstraint(fields=["version", "region", "device_type", "bucket_start"],
                                    name="metric_rollup_unique_bucket"),
        ]
        indexes = [models.Index(fields=["version", "bucket_start"], name="rollup_version_time_idx")]

    def __str__(self) -> str:
        return f"{self.version_id} {self.region}/{self.device_type} {self.bucket_start:%Y-%m-%d %H:%M}"
