"""Validation API: request a validation, read its reports, attach labelled test sets, approve (Admin)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hotswap.accounts.throttles import MonitorThrottle
from hotswap.exceptions import NotFoundError
from hotswap.lib.pagination import PageNumberPagination, paginated_response
from hotswap.lib.parsers import JSONParser, MultiPartParser
from hotswap.lib.query import query_flag
from hotswap.lib.schema import paginated_serializer
from models_app import selectors, validation_runs
from models_app.apis import ModelVersionOutputSerializer, _received_artifact
from models_app.models import AIModel, TestSet, ValidationReport
from models_app.storage import artifact_store
from models_app.uploads import ArtifactUploadHandler
from models_app.validation_serializers import InputProfileSerializer, InputProfilesField, OutputTolerancesField


class ProfileInputReportSerializer(serializers.Serializer):
    name = serializers.CharField()
    dtype = serializers.CharField()
    shape = serializers.ListField(child=serializers.IntegerField())
    source = serializers.ChoiceField(choices=["declared", "sample file", "guessed", "batch of 1", "model"],
                                     help_text="where the shape came from")
    values = serializers.CharField(help_text="how the values were chosen")


class GuessReportSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="dim (a guessed size: the shapes count as guessed), batch (a batch axis "
                                           "at 1, as devices call models), graph (a size the graph fixes) or value "
                                           "(values of a non-float input)")
    input = serializers.CharField()
    axis = serializers.IntegerField(required=False)
    dim = serializers.CharField(allow_null=True, required=False)
    value = serializers.JSONField()
    why = serializers.CharField()


class GateReportSerializer(serializers.Serializer):
    name = serializers.CharField()
    threshold = serializers.FloatField(allow_null=True)
    measured = serializers.FloatField(allow_null=True)
    passed = serializers.BooleanField(allow_null=True)
    detail = serializers.CharField()


class ProfileReportSerializer(serializers.Serializer):
    """One input profile as it was validated: inputs used and their source, guesses, figures, gates."""

    name = serializers.CharField()
    source = serializers.CharField(allow_null=True, help_text="declared, sample file, guessed or model")
    inputs = ProfileInputReportSerializer(many=True)
    guessed = GuessReportSerializer(many=True)
    feedback = serializers.DictField(child=serializers.CharField(), required=False)
    samples = serializers.IntegerField(allow_null=True, required=False)
    metrics = serializers.DictField(child=serializers.FloatField(allow_null=True))
    baseline = serializers.JSONField(allow_null=True, help_text="the baseline measured side by side: its metrics "
                                                                "and the deltas (latency_increase, latency_p_value)")
    gates = GateReportSerializer(many=True)
    error = serializers.CharField(allow_null=True)


class ValidationReportOutputSerializer(serializers.ModelSerializer):
    """A validation run with its steps, metrics, gates and environment."""

    validation_id = serializers.IntegerField(source="pk")
    model_id = serializers.CharField(source="version.model_id")
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True, default=None)
    test_set = serializers.CharField(source="test_set.name", allow_null=True, default=None)
    baseline_model_id = serializers.CharField(source="baseline.version.model_id", allow_null=True, default=None)
    steps = serializers.JSONField(source="result.steps", default=list)
    metrics = serializers.JSONField(source="result.metrics", default=dict)
    baseline_deltas = serializers.JSONField(source="result.baseline_deltas", default=dict)
    gates = serializers.JSONField(source="result.gates", default=list)
    environment = serializers.JSONField(source="result.environment", default=dict)
    profiles = ProfileReportSerializer(source="result.profiles", many=True, default=list)
    baseline_source = serializers.CharField(source="result.baseline_source", allow_null=True, default=None)

    class Meta:
        model = ValidationReport
        fields = ["validation_id", "model_id", "status", "summary", "requested_by", "requested_at", "started_at",
                  "finished_at", "attempts", "test_set", "gate_overrides", "gates_applied", "baseline_model_id",
                  "baseline_source", "steps", "metrics", "baseline_deltas", "gates", "profiles", "environment"]


@extend_schema_field({"type": "object", "additionalProperties": False,
                      "properties": {name: {"type": "number", "minimum": 0}
                                     for name in sorted(validation_runs.GATE_NAMES)}})
class GateOverridesField(serializers.DictField):
    """Gate thresholds by gate name; only known gates (validation_runs refuses the others, naming each)."""

    child = serializers.FloatField()


class ModelVersionValidateApi(APIView):
    """Queues a validation of a version (202); a validation already queued or running is returned instead."""

    required_permission = "models_app.validate_modelversion"
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        test_set = serializers.CharField(required=False, allow_null=True, default=None,
                                         help_text="name of one of the model's test sets")
        gates = GateOverridesField(required=False, default=dict)
        input_profiles = InputProfilesField(required=False, allow_null=True, default=None,
                                            help_text="declares this version's input profiles (replacing the "
                                                      "model's for it) before validating at them")

    @extend_schema(summary="Validate a model version",
                   description="Roles: Admin, ModelDeveloper. Runs on a worker in an isolated child process, at each "
                               "input profile of the version (else the model's; else at guessed shapes, which "
                               "ends `needs_approval`). `input_profiles` declares the version's profiles first. "
                               f"Gates: {', '.join(sorted(settings.VALIDATION_GATES))}. Errors: 400 "
                               "VALIDATION_ERROR, 404 MODEL_NOT_FOUND / TEST_SET_NOT_FOUND, 409 VERSION_DEPRECATED.",
                   request=InputSerializer, responses={202: ValidationReportOutputSerializer,
                                                       404: OpenApiResponse(description="not found"),
                                                       409: OpenApiResponse(description="VERSION_DEPRECATED")})
    def post(self, request: Request, model_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = selectors.model_version_get(model_id=model_id)
        test_set = None
        if name := serializer.validated_data["test_set"]:
            test_set = TestSet.objects.filter(ai_model=version.ai_model, name=name).first()
            if test_set is None:
                raise NotFoundError(f"Model '{version.ai_model.name}' has no test set '{name}'.",
                                    code="TEST_SET_NOT_FOUND")
        report = validation_runs.validation_request(version=version, requested_by=request.user, test_set=test_set,
                                                    gate_overrides=serializer.validated_data["gates"],
                                                    input_profiles=serializer.validated_data["input_profiles"])
        return Response(ValidationReportOutputSerializer(report).data, status=status.HTTP_202_ACCEPTED)


class ModelVersionValidationReportApi(APIView):
    """The latest validation report of a version (`?all=true`: every report, newest first)."""

    required_permission = "models_app.view_modelversion"
    throttle_classes = [MonitorThrottle]

    @extend_schema(summary="Validation report of a version",
                   description="Roles: all. The latest report; `?all=true`: a page of every report, newest first.",
                   parameters=[OpenApiParameter("all", bool)],
                   responses={200: PolymorphicProxySerializer(
                       component_name="ValidationReportOrPage", resource_type_field_name=None,
                       serializers=[ValidationReportOutputSerializer, paginated_serializer(
                           "PaginatedValidationReportList", ValidationReportOutputSerializer(many=True))]),
                              404: OpenApiResponse(description="MODEL_NOT_FOUND / NO_VALIDATION_REPORT")})
    def get(self, request: Request, model_id: str) -> Response:
        version = selectors.model_version_get(model_id=model_id)
        reports = version.validation_reports.select_related("requested_by", "test_set", "baseline__version")
        if query_flag(request.query_params, "all"):
            return paginated_response(request=request, view=self, queryset=reports,
                                      serializer_class=ValidationReportOutputSerializer)
        latest = reports.first()
        if latest is None:
            raise NotFoundError(f"{model_id} has not been validated yet.", code="NO_VALIDATION_REPORT")
        return Response(ValidationReportOutputSerializer(latest).data)


class ModelVersionApproveApi(APIView):
    """An Admin approves a version that could not pass validation (not executable here, or a gate overridden)."""

    required_permission = "models_app.approve_modelversion"
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        # At least 10 characters once trimmed (validation_runs.model_version_approve), said in the schema too.
        reason = serializers.RegexField(r"^\s*\S[\s\S]{8,}\S\s*$", max_length=2000, error_messages={
            "invalid": "Say why in at least 10 characters: the reason is kept in the audit trail."})

    @extend_schema(summary="Approve a version for distribution",
                   description="Roles: Admin. The reason is recorded. 409 APPROVAL_NOT_NEEDED unless the version "
                               "failed validation or needs approval.",
                   request=InputSerializer, responses={200: ModelVersionOutputSerializer,
                                                       409: OpenApiResponse(description="APPROVAL_NOT_NEEDED")})
    def post(self, request: Request, model_id: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = validation_runs.model_version_approve(
            version=selectors.model_version_get(model_id=model_id), actor=request.user,
            reason=serializer.validated_data["reason"])
        return Response(ModelVersionOutputSerializer(version).data)


class TestSetOutputSerializer(serializers.ModelSerializer):
    """A labelled test set."""

    model = serializers.CharField(source="ai_model.name")
    uploaded_by = serializers.CharField(source="uploaded_by.username", allow_null=True, default=None)

    class Meta:
        model = TestSet
        fields = ["id", "model", "name", "sha256", "size_bytes", "arrays", "uploaded_by", "uploaded_at"]


def _model(name: str) -> AIModel:
    ai_model = AIModel.objects.filter(name=name).first()
    if ai_model is None:
        raise NotFoundError(f"Model '{name}' does not exist.", code="MODEL_NOT_FOUND")
    return ai_model


class TestSetListApi(APIView):
    """The labelled test sets of a model."""

    required_permission = "models_app.view_modelversion"
    pagination_class = PageNumberPagination  # documents the page envelope and parameters

    @extend_schema(summary="List a model's test sets", description="Roles: all.",
                   responses={200: TestSetOutputSerializer(many=True)})
    def get(self, request: Request, name: str) -> Response:
        return paginated_response(request=request, view=self, queryset=_model(name).test_sets.all(),
                                  serializer_class=TestSetOutputSerializer)


class TestSetUploadApi(APIView):
    """Uploads a labelled .npz test set (arrays `labels` and `inputs` or one per input name)."""

    required_permission = "models_app.validate_modelversion"
    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
        artifact = serializers.FileField(required=False, allow_empty_file=True, help_text="the .npz file")

    @extend_schema(summary="Upload a labelled test set", description="Roles: Admin, ModelDeveloper. 400 "
                   "INVALID_TEST_SET, 409 TEST_SET_EXISTS.",
                   request={"multipart/form-data": InputSerializer},
                   responses={201: TestSetOutputSerializer, 409: OpenApiResponse(description="TEST_SET_EXISTS")})
    def post(self, request: Request, name: str) -> Response:
        ai_model = _model(name)
        handler = ArtifactUploadHandler(request._request, store=artifact_store(), max_bytes=settings.ARTIFACT_MAX_BYTES)
        request._request.upload_handlers = [handler]
        try:
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            test_set = validation_runs.test_set_upload(
                ai_model=ai_model, name=serializer.validated_data["name"],
                artifact=_received_artifact(request, handler), uploaded_by=request.user)
        finally:
            handler.discard_all()
        return Response(TestSetOutputSerializer(test_set).data, status=status.HTTP_201_CREATED)


class InputProfilesOutputSerializer(serializers.Serializer):
    owner = serializers.CharField(help_text="the model's name, or the version's model_id")
    input_profiles = InputProfileSerializer(many=True)


class _InputProfilesApi(APIView):
    required_permission = "models_app.validate_modelversion"
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        input_profiles = InputProfilesField(allow_empty=True)

    def _declare(self, request: Request, ai_model: AIModel, version=None) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        owner = validation_runs.input_profiles_declare(ai_model=ai_model, version=version,
                                                       profiles=serializer.validated_data["input_profiles"])
        return Response(InputProfilesOutputSerializer(
            {"owner": getattr(owner, "model_id", None) or owner.name, "input_profiles": owner.input_profiles}).data)


_PROFILES_DOC = ("Roles: Admin, ModelDeveloper. Checked against the model's inputs as its last validation read them "
                 "(else its declared schema): 400 VALIDATION_ERROR naming each unknown input, rank or fixed "
                 "dimension that contradicts the model, dtype it does not take, input over the validation memory "
                 "limit, unknown test set. An empty list removes them. Takes effect at the next validation.")


class ModelInputProfilesApi(_InputProfilesApi):
    """Declares how a model is called: input profiles every version is validated at."""

    @extend_schema(summary="Declare a model's input profiles", description=_PROFILES_DOC, request=_InputProfilesApi.
                   InputSerializer, responses={200: InputProfilesOutputSerializer})
    def put(self, request: Request, name: str) -> Response:
        return self._declare(request, _model(name))


class ModelVersionInputProfilesApi(_InputProfilesApi):
    """Declares one version's own input profiles (they replace the model's for it)."""

    @extend_schema(summary="Declare a version's input profiles", description=_PROFILES_DOC,
                   request=_InputProfilesApi.InputSerializer, responses={200: InputProfilesOutputSerializer})
    def put(self, request: Request, name: str, version: str) -> Response:
        found = selectors.model_version_get_by_name(name=name, version=version)
        return self._declare(request, found.ai_model, found)


class ModelOutputTolerancesApi(APIView):
    """How close outputs must be to count as equal: a test set's expected outputs, and the baseline's outputs."""

    required_permission = "models_app.validate_modelversion"
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        output_tolerances = OutputTolerancesField(help_text='output name (or "*" for every output) -> tolerance')

    @extend_schema(summary="Set a model's output tolerances",
                   description="Roles: Admin, ModelDeveloper. 400 VALIDATION_ERROR for an output the model does not "
                               "have (as its last validation read them). Gate min_output_match judges the share of "
                               "test samples within tolerance; min_baseline_agreement the share agreeing with the "
                               "previous version.",
                   request=InputSerializer, responses={200: InputSerializer})
    def put(self, request: Request, name: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tolerances = validation_runs.output_tolerances_set(
            ai_model=_model(name), tolerances=serializer.validated_data["output_tolerances"])
        return Response({"output_tolerances": tolerances})
