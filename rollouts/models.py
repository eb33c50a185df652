"""Distributions: which version goes to which devices, in which stages, and every step of the way."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Strategy(models.TextChoices):
    DIRECT = "direct"
    CANARY = "canary"
    PROGRESSIVE = "progressive"
    REGIONAL = "regional"
    AB_TEST = "ab_test", "A/B test"


class RollbackPolicy(models.TextChoices):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class Distribution(models.Model):
    """A staged rollout of one model version (two for an A/B test) to the devices a filter targets."""

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"
        RUNNING = "running"
        PAUSED = "paused"
        COMPLETED = "completed"
        ABORTED = "aborted"
        ROLLED_BACK = "rolled_back", "Rolled back"

    name = models.CharField(max_length=200, blank=True)
    # The one model this distribution ships versions of; it touches only that model's slot on each device.
    ai_model = models.ForeignKey("models_app.AIModel", on_delete=models.PROTECT, related_name="distributions")
    version = models.ForeignKey("models_app.ModelVersion", on_delete=models.PROTECT, related_name="distributions")
    version_b = models.ForeignKey("models_app.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="ab_distributions", help_text="the challenger of an A/B test")
    strategy = models.CharField(max_length=16, choices=Strategy.choices)
    strategy_reason = models.CharField(max_length=300, blank=True, help_text="why this strategy was chosen")
    config = models.JSONField(default=dict, blank=True, help_text="the strategy's configuration, normalised")
    target = models.JSONField(default=dict, blank=True,
                              help_text="regions, device_types, tags, device_ids, min_memory_mb")
    success_criteria = models.JSONField(default=dict, blank=True)
    rollback_policy = models.CharField(max_length=16, choices=RollbackPolicy.choices,
                                       default=RollbackPolicy.AUTOMATIC)
    install_timeout_seconds = models.PositiveIntegerField(default=900)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    is_rollback = models.BooleanField(default=False,
                                      help_text="restores an earlier version: devices accept the downgrade")
    failure_threshold = models.FloatField(default=0.1, help_text="share of failed installs in a stage that halts it")

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True)
    scheduled_at = models.DateTimeField(help_text="when the first stage may start")
    device_count = models.PositiveIntegerField(default=0)
    winner = models.ForeignKey("models_app.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="won_distributions")
    traceparent = models.CharField(max_length=55, blank=True)

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+", help_text="who approved the last manual gate")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("rollback_distribution", "Can roll back a distribution")]
        indexes = [models.Index(fields=["status", "scheduled_at"], name="distribution_due_idx")]

    def __str__(self) -> str:
        return self.name or f"distribution {self.pk}"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


OPEN_STATUSES = (Distribution.Status.SCHEDULED, Distribution.Status.RUNNING, Distribution.Status.PAUSED)


class Stage(models.Model):
    """One step of a distribution: a slice of the target set, a soak, then a gate."""

    class Kind(models.TextChoices):
        ALL = "all"
        CANARY = "canary"
        PERCENTAGE = "percentage"
        REGION = "region"
        AB_TEST = "ab_test", "A/B test"
        REST = "rest"

    class Status(models.TextChoices):
        PENDING = "pending"
        INSTALLING = "installing"
        SOAKING = "soaking"
        AWAITING_APPROVAL = "awaiting_approval"
        PASSED = "passed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Gate(models.TextChoices):
        AUTOMATIC = "automatic"
        MANUAL = "manual"

    class Verdict(models.TextChoices):
        PASS = "pass"
        FAIL = "fail"
        INCONCLUSIVE = "inconclusive"

    distribution = models.ForeignKey(Distribution, on_delete=models.CASCADE, related_name="stages")
    index = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=100)
    percent = models.FloatField(null=True, blank=True, help_text="cumulative share of the target set")
    region = models.CharField(max_length=64, blank=True)
    soak_seconds = models.PositiveIntegerField(default=0)
    delay_seconds = models.PositiveIntegerField(default=0, help_text="wait after the previous stage before starting")
    gate = models.CharField(max_length=16, choices=Gate.choices, default=Gate.AUTOMATIC)
    device_count = models.PositiveIntegerField(default=0)

    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    installed_at = models.DateTimeField(null=True, blank=True, help_text="when every install had an outcome")
    soak_ends_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    verdict = models.CharField(max_length=16, choices=Verdict.choices, blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")

    class Meta:
        ordering = ["distribution", "index"]
        constraints = [models.UniqueConstraint(fields=["distribution", "index"], name="stage_order_unique")]

    def __str__(self) -> str:
        return f"{self.distribution} · stage {self.index + 1} ({self.name})"


class Assignment(models.Model):
    """One device's part in a distribution: what it should install, what it ran before, how it went."""

    class State(models.TextChoices):
        PENDING = "pending"
        OFFERED = "offered"
        DOWNLOADING = "downloading"
        INSTALLED = "installed"
        ACTIVE = "active"
        FAILED = "failed"
        TIMED_OUT = "timed_out"
        ROLLED_BACK = "rolled_back"
        SUPERSEDED = "superseded"
        CANCELLED = "cancelled"

    distribution = models.ForeignKey(Distribution, on_delete=models.CASCADE, related_name="assignments")
    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="assignments")
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="assignments")
    # The distribution's model: a device belongs to one open distribution per model (the index below).
    ai_model = models.ForeignKey("models_app.AIModel", on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey("models_app.ModelVersion", on_delete=models.PROTECT, related_name="+")
    previous_version = models.ForeignKey("models_app.ModelVersion", null=True, blank=True,
                                         on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # True while the distribution may still change this device's desired state: the partial
    # unique index below is what keeps two running distributions of one model off one device.
    is_open = models.BooleanField(default=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=2000, blank=True)
    sequence = models.PositiveBigIntegerField(null=True, blank=True, help_text="desired-state sequence offered")
    offered_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "ai_model"], condition=Q(is_open=True),
                                    name="one_open_assignment_per_device_model"),
            models.UniqueConstraint(fields=["stage", "device"], name="assignment_stage_device_unique"),
        ]
        indexes = [
            models.Index(fields=["stage", "state"], name="assignment_stage_state_idx"),
            models.Index(fields=["distribution", "device"], name="assignment_dist_device_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} → {self.version_id} ({self.state})"


class Transition(models.Model):
    """One status change of a distribution or one of its stages: the audit trail."""

    distribution = models.ForeignKey(Distribution, on_delete=models.CASCADE, related_name="transitions")
    stage = models.ForeignKey(Stage, null=True, blank=True, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=24)
    to_status = models.CharField(max_length=24)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_label = models.CharField(max_length=150, help_text="the user's name, or 'orchestrator'")
    reason = models.CharField(max_length=1000, blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        what = f"stage {self.stage.index + 1}" if self.stage_id else "distribution"
        return f"{what}: {self.from_status} → {self.to_status}"
