"""Distributions API: create, list and follow distributions; approve, pause, resume, abort, roll back them."""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.apis import PAGE_PARAMETERS, StrictSerializer, _paginated
from hotswap.accounts.schema import FORBIDDEN, UNAUTHENTICATED, error_response
from hotswap.accounts.throttles import DistributionCreateThrottle, MonitorThrottle
from hotswap.exceptions import NotFoundError
from hotswap.lib.pagination import paginated_response
from models_app.models import ModelVersion
from models_app.selectors import model_version_get, model_version_get_by_name
from rollouts import selectors, services
from rollouts.criteria import DEFAULT_CRITERIA
from rollouts.models import Distribution, RollbackPolicy, Stage, Strategy, Transition

TAGS = ["distributions"]
MODEL_ID_MAX = 129

VALIDATION_ERROR = error_response("VALIDATION_ERROR: every problem is listed in `details` (field, message).")
RATE_LIMITED = error_response("RATE_LIMITED: too many requests; see the Retry-After header.")
DISTRIBUTION_NOT_FOUND = error_response("DISTRIBUTION_NOT_FOUND: no distribution has this id.")
INVALID_TRANSITION = error_response(
    "INVALID_TRANSITION: the distribution's status does not allow this (e.g. pausing a paused one, approving "
    "when nothing waits for approval), or it changed in the meantime. `error.status` is the status it has.")


# --- Documentation of the free-form objects (validated by the services, which name every bad key) -----------

class DistributionTargetSerializer(serializers.Serializer):
    """Which devices a distribution targets. None given: the devices that run or are assigned the model (an
    upgrade; other models on them stay). Filters given: every one must match, and the model is installed on
    matching devices that do not have it yet (unless they already run the protocol's maximum of models).
    Devices that cannot run the version (memory, device type) are left out."""

    regions = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    device_types = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                 help_text="A device must carry all of them.")
    device_ids = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                       help_text="At most 10 000.")
    min_memory_mb = serializers.IntegerField(min_value=0, required=False)
    running_versions = serializers.ListField(child=serializers.CharField(max_length=MODEL_ID_MAX), required=False,
                                             help_text="model_ids: devices currently running one of them.")
    versions = serializers.ListField(child=serializers.CharField(max_length=MODEL_ID_MAX), required=False,
                                     help_text="model_ids: devices running or assigned one of them.")


def _one_of(values: list[str]) -> str:
    return f"{', '.join(values[:-1])} or {values[-1]}"


# Status-like fields are strings with their values in the help text (as in the devices API): as enums, the
# same field names with other choice sets in other components would collide in the OpenAPI document.
def _status_field(choices: type, **kwargs) -> serializers.CharField:
    return serializers.CharField(help_text=_one_of(choices.values), **kwargs)


def _criterion(help_text: str, key: str, **kwargs) -> serializers.Field:
    field = serializers.IntegerField if key.startswith("min_") else serializers.FloatField
    return field(required=False, help_text=f"{help_text} Default: {DEFAULT_CRITERIA[key]}.", **kwargs)


class SuccessCriteriaSerializer(serializers.Serializer):
    """What the health judge holds the new version to; absent keys take the defaults."""

    max_latency_p99_ms = _criterion("Absolute p99 latency ceiling in ms (null: none).", "max_latency_p99_ms",
                                    allow_null=True)
    max_error_rate = _criterion("Highest error rate, 0-1.", "max_error_rate")
    max_latency_increase = _criterion("Largest p99 latency increase over the baseline, in percent.",
                                      "max_latency_increase")
    max_accuracy_drop = _criterion("Largest accuracy drop against the baseline, in percent.", "max_accuracy_drop")
    min_devices = _criterion("Devices that must report before a verdict.", "min_devices")
    min_inferences = _criterion("Inferences that must be reported before a verdict.", "min_inferences")
    confidence = _criterion("Statistical confidence of a verdict, 0.5-0.9999.", "confidence")


@extend_schema_field(DistributionTargetSerializer)
class TargetField(serializers.DictField):
    """The target filter as given; the service validates it."""


@extend_schema_field(SuccessCriteriaSerializer)
class CriteriaField(serializers.DictField):
    """Success criteria as given; the service validates them."""


STRATEGY_CONFIG_HELP = (
    "Per strategy (durations in ISO 8601, e.g. PT30M; gates `automatic` or `manual`): "
    "direct `{soak}` (PT5M); canary `{percent, soak, gate, final_soak}` (10, PT30M, automatic, PT0S); "
    "progressive `{stages: [{percent, soak, gate}]}` or `{percentages, soak, gate}` ([10, 25, 50, 100], PT30M); "
    "regional `{regions, delay, soak, gate}` (smallest region first, PT0S, PT30M); "
    "ab_test `{split, window, metric, min_improvement}` (50, PT1H, latency_p99_ms, 5)."
)


# --- Output ---------------------------------------------------------------------------------------------------

class StageOutputSerializer(serializers.ModelSerializer):
    """One stage of a distribution with its device count."""

    status = _status_field(Stage.Status)
    gate = _status_field(Stage.Gate)
    approved_by = serializers.CharField(source="approved_by.username", allow_null=True, default=None)

    class Meta:
        model = Stage
        fields = ["index", "name", "kind", "status", "gate", "percent", "region", "soak_seconds", "delay_seconds",
                  "device_count", "started_at", "installed_at", "soak_ends_at", "finished_at", "verdict",
                  "approved_by"]


class DistributionOutputSerializer(serializers.ModelSerializer):
    """A distribution as lists show it."""

    model = serializers.CharField(source="ai_model.name", help_text="the one model this distribution ships; it "
                                                                    "changes only that model's slot on each device")
    version = serializers.CharField(source="version.model_id", help_text="model_id of the version shipped")
    version_b = serializers.CharField(source="version_b.model_id", allow_null=True, default=None,
                                      help_text="model_id of the A/B challenger")
    winner = serializers.CharField(source="winner.model_id", allow_null=True, default=None,
                                   help_text="model_id of the A/B winner")
    status = _status_field(Distribution.Status)
    target = TargetField()
    success_criteria = CriteriaField()
    config = serializers.DictField(help_text="The strategy's configuration, with every default filled in.")
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    approved_by = serializers.CharField(source="approved_by.username", allow_null=True, default=None)

    class Meta:
        model = Distribution
        fields = ["id", "name", "model", "version", "version_b", "winner", "status", "status_reason", "strategy",
                  "strategy_reason", "config", "target", "success_criteria", "rollback_policy",
                  "install_timeout_seconds", "max_attempts", "failure_threshold", "is_rollback", "device_count",
                  "scheduled_at", "created_by", "approved_by", "created_at", "started_at", "finished_at",
                  "updated_at"]


class DistributionDetailOutputSerializer(DistributionOutputSerializer):
    """A distribution with its stages."""

    stages = StageOutputSerializer(many=True)

    class Meta(DistributionOutputSerializer.Meta):
        fields = [*DistributionOutputSerializer.Meta.fields, "stages"]


class ProgressOutputSerializer(serializers.Serializer):
    """Device counts by what the devices did; success_rate = active / (active + failed), null before any outcome."""

    targeted = serializers.IntegerField()
    pending = serializers.IntegerField(help_text="not offered yet")
    offered = serializers.IntegerField(help_text="offered so far, whatever came of it")
    installing = serializers.IntegerField(help_text="offered, downloading or installed, not active yet")
    installed = serializers.IntegerField(help_text="installed or active")
    active = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="failed or timed out")
    rolled_back = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True)


class StageStatusOutputSerializer(serializers.Serializer):
    """One stage's status, verdict and progress."""

    index = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=Stage.Kind.choices)
    status = _status_field(Stage.Status)
    gate = _status_field(Stage.Gate)
    percent = serializers.FloatField(allow_null=True)
    region = serializers.CharField()
    soak_seconds = serializers.IntegerField()
    started_at = serializers.DateTimeField(allow_null=True)
    soak_ends_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    verdict = serializers.CharField(help_text="pass, fail, inconclusive, or empty before a verdict")
    evidence = serializers.DictField(help_text=(
        "What the judge saw (metrics, baseline, reason, overrides); `versions` names the model versions whose "
        "windows each side read (always one model: the distribution's)."))
    progress = ProgressOutputSerializer()


class MetricSummaryOutputSerializer(serializers.Serializer):
    """Telemetry of one side of the comparison (medians over devices for latencies)."""

    devices = serializers.IntegerField()
    inferences = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    latency_p99_ms = serializers.FloatField(allow_null=True)
    latency_p50_ms = serializers.FloatField(allow_null=True)
    accuracy = serializers.FloatField(allow_null=True)


class LiveMetricsOutputSerializer(serializers.Serializer):
    """The current stage's new version against its baseline, as the health judge sees it now."""

    stage = serializers.IntegerField(help_text="index of the stage compared")
    baseline_is = serializers.CharField(help_text="what the baseline is")
    new = MetricSummaryOutputSerializer()
    baseline = MetricSummaryOutputSerializer()
    latency_increase_pct = serializers.FloatField(allow_null=True)
    accuracy_drop_pct = serializers.FloatField(allow_null=True)


class DistributionStatusOutputSerializer(serializers.Serializer):
    """Progress per stage and overall, the current stage and what the distribution waits for."""

    id = serializers.IntegerField()
    status = _status_field(Distribution.Status)
    status_reason = serializers.CharField()
    current_stage = serializers.IntegerField(allow_null=True, help_text="index of the stage in progress; null "
                                                                         "once the distribution has ended")
    waiting_for = serializers.CharField(help_text="In an operator's words; empty once it has ended.")
    progress = ProgressOutputSerializer()
    live_metrics = LiveMetricsOutputSerializer(allow_null=True, help_text="null when no stage is in progress or "
                                                                          "the distribution has ended")
    stages = StageStatusOutputSerializer(many=True)


class MetricPointOutputSerializer(serializers.Serializer):
    """One time slice of one version's figures."""

    at = serializers.DateTimeField()
    inferences = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p99_ms = serializers.FloatField(allow_null=True)
    accuracy = serializers.FloatField(allow_null=True)


class MetricSeriesOutputSerializer(serializers.Serializer):
    """The figures of one version (and group) over time."""

    version = serializers.CharField(allow_null=True)
    role = serializers.CharField(help_text="new, b (the A/B challenger) or baseline (a version devices ran before)")
    group = serializers.CharField(allow_null=True, help_text="the region or device type, with group_by")
    points = MetricPointOutputSerializer(many=True)


class MetricStageOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    name = serializers.CharField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    verdict = serializers.CharField()


class DistributionMetricsOutputSerializer(serializers.Serializer):
    """Time series per version and group, with the stage boundaries and any rollback."""

    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    interval_seconds = serializers.IntegerField()
    group_by = serializers.CharField()
    scope = serializers.CharField(help_text="distribution: its own devices; fleet: every device running the "
                                            "versions (distributions above 20,000 devices)")
    series = MetricSeriesOutputSerializer(many=True)
    stages = MetricStageOutputSerializer(many=True)
    rolled_back_at = serializers.DateTimeField(allow_null=True)
    rollback_reason = serializers.CharField()


class DistributionMetricsInputSerializer(StrictSerializer):
    interval_seconds = serializers.IntegerField(min_value=60, max_value=86400, default=60,
                                                help_text="width of a time slice (the telemetry is per minute)")
    group_by = serializers.ChoiceField(choices=["none", "region", "device_type"], default="none")


class TransitionOutputSerializer(serializers.ModelSerializer):
    """One status change of the distribution (stage null) or of one of its stages."""

    stage = serializers.IntegerField(source="stage.index", allow_null=True, default=None,
                                     help_text="stage index, null for the distribution itself")
    stage_name = serializers.CharField(source="stage.name", allow_null=True, default=None)
    actor = serializers.CharField(source="actor_label", help_text="the user's name, or 'orchestrator'")

    class Meta:
        model = Transition
        fields = ["id", "stage", "stage_name", "from_status", "to_status", "actor", "reason", "at"]


def _distribution(distribution_id: int) -> Distribution:
    found = (selectors.distribution_list().select_related("winner", "approved_by")
             .prefetch_related("stages__approved_by").filter(pk=distribution_id).first())
    if found is None:
        raise NotFoundError(f"Distribution {distribution_id} does not exist.", code="DISTRIBUTION_NOT_FOUND")
    return found


def _version(model_id: str, field: str) -> ModelVersion:
    """The version a request names; 404 MODEL_NOT_FOUND naming the field otherwise."""
    try:
        return model_version_get(model_id=model_id)
    except NotFoundError as exc:
        exc.details = [{"field": field, "message": exc.message}]
        raise


def _detail(distribution_id: int, *, code: int = status.HTTP_200_OK) -> Response:
    return Response(DistributionDetailOutputSerializer(_distribution(distribution_id)).data, status=code)


# --- Collection -----------------------------------------------------------------------------------------------

class DistributionListApi(APIView):
    """Lists distributions, newest first, with filters and pagination."""

    required_permission = "rollouts.view_distribution"
    throttle_classes = [MonitorThrottle]

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Distribution.Status.choices, required=False)
        strategy = serializers.ChoiceField(choices=Strategy.choices, required=False)
        model = serializers.CharField(required=False, max_length=64, help_text="model name, e.g. resnet")

    @extend_schema(
        tags=TAGS,
        operation_id="v1_distributions_list",
        summary="List distributions",
        description="Roles: all (Viewer and up; `rollouts.view_distribution`). Newest first. Filters: `status`, "
                    "`strategy`, `model` (model name). Stages are in the detail; progress in `/status`.",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={200: _paginated("PaginatedDistributionList", DistributionOutputSerializer(many=True)),
                   400: VALIDATION_ERROR, 401: UNAUTHENTICATED, 403: FORBIDDEN, 429: RATE_LIMITED},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated_response(request=request, view=self,
                                  queryset=selectors.distribution_list(filters=filters.validated_data)
                                  .select_related("winner", "approved_by"),
                                  serializer_class=DistributionOutputSerializer)


class DistributionCreateApi(APIView):
    """Creates a distribution: resolves the target set, plans the stages and assigns every device."""

    required_permission = "rollouts.add_distribution"
    throttle_classes = [DistributionCreateThrottle]

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        version = serializers.CharField(max_length=MODEL_ID_MAX, help_text="model_id to ship, e.g. resnet-1.1.0 "
                                                                           "(version A of an A/B test)")
        version_b = serializers.CharField(max_length=MODEL_ID_MAX, required=False, allow_null=True, default=None,
                                          help_text="model_id of the challenger; only for ab_test")
        strategy = serializers.ChoiceField(choices=Strategy.choices, required=False, allow_null=True, default=None,
                                           help_text="Omitted: chosen from the target size (see strategy_reason).")
        strategy_config = serializers.DictField(required=False, default=dict, help_text=STRATEGY_CONFIG_HELP)
        target = TargetField(required=False, default=dict)
        success_criteria = CriteriaField(required=False, default=dict)
        rollback_policy = serializers.ChoiceField(
            choices=RollbackPolicy.choices, required=False, default=RollbackPolicy.AUTOMATIC,
            help_text="automatic: a failing stage rolls everything back; manual: it pauses for an operator.")
        scheduled_at = serializers.DateTimeField(required=False, allow_null=True, default=None,
                                                 help_text="When the first stage may start; now when absent.")
        install_timeout_seconds = serializers.IntegerField(
            min_value=1, max_value=7 * 86400, required=False, allow_null=True, default=None,
            help_text="How long a device may take to report an install outcome (default 900).")
        max_attempts = serializers.IntegerField(min_value=1, max_value=100, required=False, allow_null=True,
                                                default=None, help_text="Offers per device (default 3).")
        failure_threshold = serializers.FloatField(
            min_value=0, max_value=1, required=False, allow_null=True, default=None,
            help_text="Share of failed installs in a stage that halts it (default 0.1).")

    @extend_schema(
        tags=TAGS,
        summary="Create a distribution",
        description="Roles: Admin, Operator (`rollouts.add_distribution`). Only a version whose validation passed "
                    "or that an Admin approved can ship. Without `strategy` one is chosen from the number of "
                    "target devices (< 10 direct, 10-100 canary, > 100 progressive; two versions: ab_test) and "
                    "`strategy_reason` says why. The distribution starts at `scheduled_at` (now by default); "
                    "follow it at `/distributions/{id}/status`. Rate limit: THROTTLE_DISTRIBUTION_CREATE per user "
                    "(20/hour by default). Errors: 400 VALIDATION_ERROR (every problem in `details`, e.g. "
                    "`strategy_config.soak`, `target.regions`), 400 VERSION_NOT_DISTRIBUTABLE (with the reason), "
                    "400 NO_TARGET_DEVICES, 400 INSTALL_NEEDS_TARGET (no target given and no device runs or is "
                    "assigned the model: name the devices to install it on), 400 AB_TEST_ACROSS_MODELS (`version_b` "
                    "is of another model), 404 MODEL_NOT_FOUND, 409 DISTRIBUTION_IN_PROGRESS (targeted devices "
                    "belong to an open distribution of the same model; `error.conflicts` lists them as "
                    "`{distribution, name, devices}`; distributions of other models may share devices), "
                    "409 TOO_MANY_DISTRIBUTIONS. A distribution ships one model and touches only that model's slot "
                    "on each device.",
        request=InputSerializer,
        responses={
            201: DistributionDetailOutputSerializer,
            400: error_response("VALIDATION_ERROR, VERSION_NOT_DISTRIBUTABLE, NO_TARGET_DEVICES, "
                                "INSTALL_NEEDS_TARGET or AB_TEST_ACROSS_MODELS."),
            401: UNAUTHENTICATED, 403: FORBIDDEN,
            404: error_response("MODEL_NOT_FOUND: `version` or `version_b` names no version (see `details`)."),
            409: error_response("DISTRIBUTION_IN_PROGRESS (with `conflicts`) or TOO_MANY_DISTRIBUTIONS."),
            429: RATE_LIMITED,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        distribution = services.distribution_create(
            version=_version(data["version"], "version"),
            version_b=_version(data["version_b"], "version_b") if data["version_b"] else None,
            strategy=data["strategy"], config=data["strategy_config"], target=data["target"],
            success_criteria=data["success_criteria"], rollback_policy=data["rollback_policy"],
            scheduled_at=data["scheduled_at"], name=data["name"],
            install_timeout_seconds=data["install_timeout_seconds"], max_attempts=data["max_attempts"],
            failure_threshold=data["failure_threshold"], actor=request.user,
        )
        return _detail(distribution.pk, code=status.HTTP_201_CREATED)


# --- One distribution -----------------------------------------------------------------------------------------

class DistributionGetApi(APIView):
    """One distribution with its stages."""

    required_permission = "rollouts.view_distribution"
    throttle_classes = [MonitorThrottle]

    @extend_schema(tags=TAGS, summary="Get a distribution",
                   description="Roles: all (`rollouts.view_distribution`). The distribution with its stages and "
                               "their device counts; the audit trail is at `/distributions/{id}/transitions`.",
                   responses={200: DistributionDetailOutputSerializer, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                              404: DISTRIBUTION_NOT_FOUND, 429: RATE_LIMITED})
    def get(self, request: Request, distribution_id: int) -> Response:
        return _detail(distribution_id)


class DistributionStatusApi(APIView):
    """Progress per stage and overall, the current stage and what the distribution waits for."""

    required_permission = "rollouts.view_distribution"
    throttle_classes = [MonitorThrottle]

    @extend_schema(tags=TAGS, summary="Progress of a distribution",
                   description="Roles: all (`rollouts.view_distribution`). Per stage and overall: devices "
                               "targeted, pending, offered, installing, installed, active, failed, rolled back, "
                               "and the success rate; the current stage; and what the distribution waits for "
                               "(a scheduled start, installs, a soak, an operator's approval or decision); and the "
                               "current stage's live metrics against its baseline.",
                   responses={200: DistributionStatusOutputSerializer, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                              404: DISTRIBUTION_NOT_FOUND, 429: RATE_LIMITED})
    def get(self, request: Request, distribution_id: int) -> Response:
        progress = selectors.distribution_status(distribution=_distribution(distribution_id))
        return Response(DistributionStatusOutputSerializer(progress).data)


class DistributionMetricsApi(APIView):
    """The telemetry of a distribution over time: the new version against its baseline."""

    required_permission = "rollouts.view_distribution"
    throttle_classes = [MonitorThrottle]

    @extend_schema(tags=TAGS, summary="Telemetry of a distribution over time",
                   description="Roles: all (`rollouts.view_distribution`). Per version (the new one, an A/B "
                               "challenger, the versions devices ran before) and optionally per region or device "
                               "type: inferences, error rate, p50/p99 latency and accuracy per time slice, from 30 "
                               "minutes before the start; with the stage boundaries and any rollback.",
                   parameters=[DistributionMetricsInputSerializer],
                   responses={200: DistributionMetricsOutputSerializer, 400: VALIDATION_ERROR,
                              401: UNAUTHENTICATED, 403: FORBIDDEN, 404: DISTRIBUTION_NOT_FOUND,
                              429: RATE_LIMITED})
    def get(self, request: Request, distribution_id: int) -> Response:
        query = DistributionMetricsInputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        metrics = selectors.distribution_metrics(distribution=_distribution(distribution_id), **query.validated_data)
        return Response(DistributionMetricsOutputSerializer(metrics).data)


class DistributionTransitionListApi(APIView):
    """The audit trail: every status change of the distribution and its stages, oldest first."""

    required_permission = "rollouts.view_distribution"
    throttle_classes = [MonitorThrottle]

    @extend_schema(tags=TAGS, operation_id="v1_distributions_transitions_list", summary="Audit trail of a "
                   "distribution",
                   description="Roles: all (`rollouts.view_distribution`). Every status change of the distribution "
                               "(`stage` null) and of its stages, oldest first: who (a user, or `orchestrator`), "
                               "when, from, to and why. Paginated.",
                   parameters=PAGE_PARAMETERS,
                   responses={200: _paginated("PaginatedTransitionList", TransitionOutputSerializer(many=True)),
                              401: UNAUTHENTICATED, 403: FORBIDDEN, 404: DISTRIBUTION_NOT_FOUND,
                              429: RATE_LIMITED})
    def get(self, request: Request, distribution_id: int) -> Response:
        transitions = _distribution(distribution_id).transitions.select_related("stage")
        return paginated_response(request=request, view=self, queryset=transitions,
                                  serializer_class=TransitionOutputSerializer)


# --- Operator actions -----------------------------------------------------------------------------------------

class ReasonInputSerializer(StrictSerializer):
    """Why: recorded in the audit trail and the distribution's status_reason."""

    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


def _action_schema(summary: str, description: str, permission: str, *, request=ReasonInputSerializer,
                   response=DistributionDetailOutputSerializer, extra_errors: str = ""):
    roles = "Admin, Operator"
    return extend_schema(
        tags=TAGS, summary=summary, request=request,
        description=f"Roles: {roles} (`{permission}`). {description} Errors: 400 VALIDATION_ERROR{extra_errors}, "
                    "404 DISTRIBUTION_NOT_FOUND, 409 INVALID_TRANSITION.",
        responses={200: response, 400: VALIDATION_ERROR, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   404: DISTRIBUTION_NOT_FOUND, 409: INVALID_TRANSITION},
    )


def _reason(request: Request) -> str:
    serializer = ReasonInputSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data["reason"]


class DistributionApproveApi(APIView):
    """Opens the manual gate the distribution waits at; for an A/B test, names the winner."""

    required_permission = "rollouts.change_distribution"

    class InputSerializer(StrictSerializer):
        winner = serializers.CharField(max_length=MODEL_ID_MAX, required=False, allow_null=True, default=None,
                                       help_text="model_id of the A/B winner (version or version_b); required "
                                                 "for an A/B test, refused otherwise")

    @_action_schema("Approve the current stage",
                    "The stage awaiting approval passes and the distribution moves on. An A/B test needs "
                    "`winner`: the devices of the other version are offered the winner next. Approving twice, or "
                    "when nothing waits for approval, is a 409.",
                    "rollouts.change_distribution", request=InputSerializer,
                    extra_errors=" (a winner missing, not one of the two versions, or for a stage that is no A/B "
                                 "test), 404 MODEL_NOT_FOUND")
    def post(self, request: Request, distribution_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        distribution = _distribution(distribution_id)
        winner = serializer.validated_data["winner"]
        services.distribution_approve(distribution=distribution, actor=request.user,
                                      winner=_version(winner, "winner") if winner else None)
        return _detail(distribution_id)


class _ReasonActionApi(APIView):
    """A status change an operator asks for, with an optional reason; answers with the distribution."""

    required_permission = "rollouts.change_distribution"
    action: Callable[..., object]

    def post(self, request: Request, distribution_id: int) -> Response:
        self.action(distribution=_distribution(distribution_id), actor=request.user, reason=_reason(request))
        return _detail(distribution_id)


@extend_schema_view(post=_action_schema(
    "Pause a distribution",
    "Only a running distribution can be paused. Devices already offered the version go on installing; no further "
    "stage starts until it is resumed.", "rollouts.change_distribution"))
class DistributionPauseApi(_ReasonActionApi):
    """Stops offering new stages; devices already offered go on installing."""

    action = staticmethod(services.distribution_pause)


@extend_schema_view(post=_action_schema(
    "Resume a distribution",
    "Only a paused distribution can be resumed. If it was halted by failed installs or a failing verdict (manual "
    "rollback policy), resuming accepts that stage as it is.", "rollouts.change_distribution"))
class DistributionResumeApi(_ReasonActionApi):
    """Continues a paused distribution."""

    action = staticmethod(services.distribution_resume)


@extend_schema_view(post=_action_schema(
    "Abort a distribution",
    "A scheduled, running or paused distribution stops for good: nothing more is offered and the devices leave it. "
    "Devices keep what they installed; roll back to undo that.", "rollouts.change_distribution"))
class DistributionAbortApi(_ReasonActionApi):
    """Stops a distribution for good; devices keep what they installed."""

    action = staticmethod(services.distribution_abort)


class DistributionRollbackApi(APIView):
    """Every device the distribution touched goes back to the version it ran before."""

    required_permission = "rollouts.rollback_distribution"

    class OutputSerializer(DistributionDetailOutputSerializer):
        """The rolled-back distribution and how many devices were sent back."""

        reverted_devices = serializers.IntegerField(help_text="Devices whose desired state went back to their "
                                                              "previous version.")

        class Meta(DistributionDetailOutputSerializer.Meta):
            fields = [*DistributionDetailOutputSerializer.Meta.fields, "reverted_devices"]

    @_action_schema("Roll back a distribution",
                    "A running, paused, completed or aborted distribution: every device it offered the version to "
                    "gets its previous version back as desired state (a device a later distribution or an operator "
                    "moved on is left alone); devices converge at their next check-in. `reverted_devices` says how "
                    "many.",
                    "rollouts.rollback_distribution", response=OutputSerializer)
    def post(self, request: Request, distribution_id: int) -> Response:
        reverted = services.distribution_rollback(distribution=_distribution(distribution_id), actor=request.user,
                                                  reason=_reason(request))
        distribution = _distribution(distribution_id)
        distribution.reverted_devices = reverted
        return Response(self.OutputSerializer(distribution).data)


class ModelVersionRollbackApi(APIView):
    """Restores a version on every device running a later version of its model, as a Direct distribution."""

    required_permission = "rollouts.rollback_distribution"

    @extend_schema(
        tags=["models", *TAGS],
        summary="Roll a model back to a version",
        description="Roles: Admin, Operator (`rollouts.rollback_distribution`). Creates a Direct distribution "
                    "(no soak, manual rollback policy) that makes this version the desired state of the model's slot "
                    "on every device that runs or is assigned a later version of it (target `versions`); devices "
                    "accept the downgrade and their other models stay as they are. A deprecated version "
                    "may be restored; a failed one only if an Admin approved it. Not rate limited (it is the "
                    "emergency exit). Errors: 400 NOTHING_TO_ROLL_BACK (no later version exists), "
                    "400 NO_TARGET_DEVICES (no device runs a later version), 400 VERSION_NOT_DISTRIBUTABLE, "
                    "404 MODEL_NOT_FOUND, 409 DISTRIBUTION_IN_PROGRESS (those devices belong to an open "
                    "distribution of the model: roll that one back or abort it first; `error.conflicts` lists it), "
                    "409 TOO_MANY_DISTRIBUTIONS.",
        request=None,
        parameters=[OpenApiParameter("version", str, OpenApiParameter.PATH,
                                     description="Semantic version to restore, e.g. 1.0.0.")],
        responses={
            201: DistributionDetailOutputSerializer,
            400: error_response("NOTHING_TO_ROLL_BACK, NO_TARGET_DEVICES or VERSION_NOT_DISTRIBUTABLE."),
            401: UNAUTHENTICATED, 403: FORBIDDEN,
            404: error_response("MODEL_NOT_FOUND: no such model or version."),
            409: error_response("DISTRIBUTION_IN_PROGRESS (with `conflicts`) or TOO_MANY_DISTRIBUTIONS."),
        },
    )
    def post(self, request: Request, name: str, version: str) -> Response:
        distribution = services.model_version_rollback(
            version=model_version_get_by_name(name=name, version=version), actor=request.user)
        return _detail(distribution.pk, code=status.HTTP_201_CREATED)
