"""Model registry API: upload, list, read, download, deprecate, delete."""

from __future__ import annotations

import time

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse, HttpRequest, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hotswap.accounts.throttles import MonitorThrottle, UploadThrottle
from hotswap.exceptions import ApplicationError, ConflictError, PayloadTooLargeError, error_body
from hotswap.lib.pagination import PageNumberPagination, paginated_response
from hotswap.lib.parsers import JSONField, MultiPartParser
from hotswap.lib.query import query_filters, query_flag
from hotswap.lib.ranges import RangeNotSatisfiable, parse_byte_range
from hotswap.lib.schema import ordering_parameter
from models_app import selectors, services
from models_app.models import NAME_PATTERN, SEMVER_PATTERN, Accelerator, Framework, ModelVersion, Task
from models_app.models import validate_tensor_schema as _validate_tensor_schema
from models_app.shipping import status_ships, version_refusal
from models_app.storage import SIGNED_URL_SALT, artifact_store
from models_app.uploads import ArtifactUploadHandler, PendingArtifact
from models_app.validation.profiles import HOW_TO_DECLARE
from models_app.validation_runs import effective_profiles, version_is_distributable
from models_app.validation_serializers import InputProfileSerializer

# Room for the multipart boundaries and form fields around the artifact itself.
FORM_OVERHEAD_BYTES = 1024 * 1024

ERRORS = {
    400: OpenApiResponse(description="VALIDATION_ERROR and friends, in the standard error format"),
    401: OpenApiResponse(description="NOT_AUTHENTICATED: no or invalid credentials"),
    403: OpenApiResponse(description="PERMISSION_DENIED: your role does not allow this"),
    404: OpenApiResponse(description="MODEL_NOT_FOUND"),
    429: OpenApiResponse(description="RATE_LIMITED, with Retry-After"),
}


def _errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


class ModelVersionOutputSerializer(serializers.ModelSerializer):
    """A model version as the API shows it."""

    name = serializers.CharField(source="ai_model.name")
    framework = serializers.CharField(source="ai_model.framework")
    task = serializers.CharField(source="ai_model.task")
    description = serializers.CharField(source="ai_model.description")
    tags = serializers.ListField(source="ai_model.tags", child=serializers.CharField())
    uploaded_by = serializers.CharField(source="uploaded_by.username", allow_null=True, default=None)
    approved_by = serializers.CharField(source="approved_by.username", allow_null=True, default=None)
    distributable = serializers.SerializerMethodField()
    device_requirements = serializers.SerializerMethodField()
    input_profiles = serializers.SerializerMethodField(
        help_text="the input profiles it is validated at: its own, else its model's (see input_profiles_hint)")
    input_profiles_hint = serializers.SerializerMethodField(
        help_text="how to declare input profiles, while none is declared (validation then guesses shapes)")

    class Meta:
        model = ModelVersion
        fields = [
            "model_id", "name", "version", "framework", "task", "description", "tags", "status",
            "sha256", "sha256_verified", "size_bytes", "detected_format", "format_details", "original_filename",
            "input_schema", "output_schema", "device_requirements", "uploaded_by", "uploaded_at", "deprecated_at",
            "approved_by", "approved_at", "approval_reason", "distributable", "input_profiles", "input_profiles_hint",
        ]

    def get_distributable(self, obj: ModelVersion) -> bool:
        return version_is_distributable(obj)

    @extend_schema_field(InputProfileSerializer(many=True))
    def get_input_profiles(self, obj: ModelVersion) -> list:
        return effective_profiles(obj)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_input_profiles_hint(self, obj: ModelVersion) -> str | None:
        return None if effective_profiles(obj) else f"No input profile declared: {HOW_TO_DECLARE}."

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_device_requirements(self, obj: ModelVersion) -> dict:
        return {"target_device_type": obj.target_device_type or None, "min_memory_mb": obj.min_memory_mb,
                "accelerator": obj.accelerator}


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class TagListField(serializers.Field):
    """Tags as repeated form fields or one comma-separated value."""

    default_error_messages = {"invalid": "Tags are up to 32 comma-separated words of at most 64 characters."}

    def get_value(self, dictionary):
        if hasattr(dictionary, "getlist"):
            values = dictionary.getlist(self.field_name)
            return values if values else serializers.empty
        return dictionary.get(self.field_name, serializers.empty)

    def to_internal_value(self, data) -> list[str]:
        values = data if isinstance(data, list) else [data]
        tags = [tag.strip() for value in values for tag in str(value).split(",") if tag.strip()]
        if len(tags) > 32 or any(len(tag) > 64 for tag in tags):
            self.fail("invalid")
        return list(dict.fromkeys(tags))

    def to_representation(self, value):
        return value


_ORDERINGS = {
    "name": ("ai_model__name", "precedence"),
    "version": ("precedence",),
    "uploaded_at": ("uploaded_at",),
    "size": ("size_bytes",),
}


class ModelVersionListApi(APIView):
    """Lists model versions with filters, ordering and pagination."""

    required_permission = "models_app.view_modelversion"
    throttle_classes = [MonitorThrottle]
    pagination_class = PageNumberPagination  # documents the page envelope and parameters

    @extend_schema(
        summary="List model versions",
        description="Roles: all (Viewer and up). Filters: name, name_contains, framework, status (repeatable), tag, "
                    "detected_format. Ordering: `ordering=name|version|uploaded_at|size`, prefixed by - to reverse.",
        parameters=[OpenApiParameter("name", str), OpenApiParameter("tag", str),
                    OpenApiParameter("framework", str, enum=Framework.values),
                    OpenApiParameter("status", str, many=True, enum=ModelVersion.Status.values),
                    ordering_parameter(_ORDERINGS)],
        responses={200: ModelVersionOutputSerializer(many=True), **_errors(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        queryset = selectors.model_version_list(filters=query_filters(request.query_params))
        queryset = _order(queryset, request.query_params.get("ordering", ""))
        return paginated_response(request=request, view=self, queryset=queryset,
                                  serializer_class=ModelVersionOutputSerializer)


class VersionFieldsSerializer(serializers.Serializer):
    """What an upload declares besides the bytes: both upload paths (the multipart POST, upload sessions) take it."""

    name = serializers.RegexField(NAME_PATTERN, max_length=64, error_messages={
        "invalid": "Use 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit."})
    version = serializers.RegexField(SEMVER_PATTERN, max_length=64, error_messages={
        "invalid": "Use semantic versioning MAJOR.MINOR.PATCH[-prerelease], e.g. 1.4.0 or 2.0.0-rc.1."})
    framework = serializers.ChoiceField(choices=Framework.choices)
    sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$", error_messages={
        "invalid": "A SHA-256 checksum is 64 hexadecimal characters.",
        "required": "The artifact's SHA-256 (64 hex characters) is required: the server compares it with the "
                    "bytes it receives."},
        help_text="SHA-256 of the artifact, as `sha256sum` prints it; required, compared with the received bytes.")
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000, default="")
    task = serializers.ChoiceField(choices=Task.choices, required=False, default="")
    tags = TagListField(required=False, default=list)
    input_schema = serializers.JSONField(required=False, default=list)
    output_schema = serializers.JSONField(required=False, default=list)
    target_device_type = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")
    min_memory_mb = serializers.IntegerField(required=False, min_value=1, max_value=10_000_000, allow_null=True,
                                             default=None)
    accelerator = serializers.ChoiceField(choices=Accelerator.choices, required=False, default="none")

    def validate_input_schema(self, value):
        return _schema(value)

    def validate_output_schema(self, value):
        return _schema(value)


class ModelVersionUploadApi(APIView):
    """Uploads a new model version (multipart; the artifact streams to storage)."""

    required_permission = "models_app.upload_modelversion"
    parser_classes = [MultiPartParser]
    throttle_classes = [UploadThrottle]

    class UploadInputSerializer(VersionFieldsSerializer):
        # Form fields are text: the tensor schemas come as JSON strings.
        input_schema = JSONField(binary=True, required=False, default=list)
        output_schema = JSONField(binary=True, required=False, default=list)
        artifact = serializers.FileField(required=False, allow_empty_file=True,
                                         help_text="The model file (streamed to storage).")

    @extend_schema(
        summary="Upload a model version",
        description="Roles: Admin, ModelDeveloper. Streams the `artifact` to storage while computing SHA-256 and "
                    "size; compares with the declared `sha256` (required); detects the format from the content. "
                    "202 for a new version, 200 when the same name+version with identical bytes already exists "
                    "(retries are harmless). Errors: 400 CHECKSUM_MISMATCH / EMPTY_ARTIFACT / INVALID_ARTIFACT / "
                    "FRAMEWORK_MISMATCH / VALIDATION_ERROR, 409 VERSION_EXISTS, 413 PAYLOAD_TOO_LARGE, "
                    "503 STORAGE_UNAVAILABLE. Nothing is left behind on any error. "
                    "Rate limit: THROTTLE_UPLOAD new versions per user (rejected calls and retries are not counted). "
                    "For large files use upload sessions (`/api/v1/uploads`): resumable, straight to storage.",
        request={"multipart/form-data": UploadInputSerializer},
        responses={202: ModelVersionOutputSerializer, 200: ModelVersionOutputSerializer,
                   409: OpenApiResponse(description="VERSION_EXISTS"),
                   413: OpenApiResponse(description="PAYLOAD_TOO_LARGE"),
                   503: OpenApiResponse(description="STORAGE_UNAVAILABLE"), **_errors(400, 401, 403, 429)},
    )
    def post(self, request: Request) -> Response:
        max_bytes = settings.ARTIFACT_MAX_BYTES
        if int(request.META.get("CONTENT_LENGTH") or 0) > max_bytes + FORM_OVERHEAD_BYTES:
            raise PayloadTooLargeError(f"The artifact is larger than the limit of {max_bytes} bytes.",
                                       extra={"max_bytes": max_bytes})
        handler = ArtifactUploadHandler(request._request, store=artifact_store(), max_bytes=max_bytes)
        request._request.upload_handlers = [handler]
        try:
            serializer = self.UploadInputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            artifact = _received_artifact(request, handler)
            data = serializer.validated_data
            model_version, created = services.model_version_upload(
                artifact=artifact, name=data["name"], version=data["version"], framework=data["framework"],
                declared_sha256=data["sha256"], uploaded_by=request.user,
                description=data["description"], task=data["task"], tags=data["tags"],
                input_schema=data["input_schema"], output_schema=data["output_schema"],
                target_device_type=data["target_device_type"], min_memory_mb=data["min_memory_mb"],
                accelerator=data["accelerator"],
            )
        finally:
            handler.discard_all()  # whatever the service did not keep
        if created:
            UploadThrottle.accepted(request, self)
        body = ModelVersionOutputSerializer(model_version).data
        return Response(body, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


def _schema(value):
    try:
        _validate_tensor_schema(value)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from exc
    return value


def _received_artifact(request: Request, handler: ArtifactUploadHandler) -> PendingArtifact:
    if handler.unexpected_files:
        raise ApplicationError(
            f"Unexpected file field(s) {', '.join(handler.unexpected_files)}: send exactly one file, as 'artifact'.",
            code="VALIDATION_ERROR", details=[{"field": name, "message": "Unexpected file."}
                                              for name in handler.unexpected_files],
        )
    artifact = request.FILES.get("artifact")
    if not isinstance(artifact, PendingArtifact):
        if handler.artifacts:  # the file part started but never ended: the body was cut short
            raise ApplicationError("The upload was truncated before the artifact ended; nothing was stored.",
                                   code="TRUNCATED_UPLOAD",
                                   details=[{"field": "artifact", "message": "Incomplete file."}])
        raise ApplicationError("The model file is required as the multipart file field 'artifact'.",
                               code="VALIDATION_ERROR",
                               details=[{"field": "artifact", "message": "This field is required."}])
    artifact.finish()  # raises the storage error if storage failed while the body streamed in
    return artifact


def _order(queryset, ordering: str):
    key = ordering.lstrip("-")
    if not ordering:
        return queryset.order_by("-uploaded_at", "-id")
    if key not in _ORDERINGS:
        choices = ", ".join(_ORDERINGS)
        raise serializers.ValidationError({"ordering": [f"Order by one of {choices} (prefix - to reverse)."]})
    sign = "-" if ordering.startswith("-") else ""
    return queryset.order_by(*(f"{sign}{field}" for field in _ORDERINGS[key]), f"{sign}id")


class ModelVersionGetApi(APIView):
    """One model version by model_id (`{name}-{version}`)."""

    required_permission = "models_app.view_modelversion"
    throttle_classes = [MonitorThrottle]

    @extend_schema(summary="Get a model version", description="Roles: all.",
                   responses={200: ModelVersionOutputSerializer, **_errors(401, 403, 404, 429)})
    def get(self, request: Request, model_id: str) -> Response:
        return Response(ModelVersionOutputSerializer(selectors.model_version_get(model_id=model_id)).data)


class ModelVersionDeleteApi(APIView):
    """Deletes a model version and its stored artifact."""

    required_permission = "models_app.delete_modelversion"

    @extend_schema(
        summary="Delete a model version",
        description="Roles: Admin. Deletes the stored artifact, then the record. 409 VERSION_IN_USE while it is "
                    "deployed or part of a running distribution; 503 STORAGE_UNAVAILABLE (the record stays).",
        responses={204: None, 409: OpenApiResponse(description="VERSION_IN_USE"),
                   503: OpenApiResponse(description="STORAGE_UNAVAILABLE"), **_errors(401, 403, 404)},
    )
    def delete(self, request: Request, model_id: str) -> Response:
        services.model_version_delete(model_version=selectors.model_version_get(model_id=model_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelDownloadApi(APIView):
    """A short-lived download URL for a version's artifact (S3 presigned, or a signed local URL)."""

    required_permission = "models_app.download_modelversion"
    throttle_classes = [MonitorThrottle]

    class OutputSerializer(serializers.Serializer):
        url = serializers.URLField()
        expires_at = serializers.DateTimeField()
        sha256 = serializers.CharField()
        size_bytes = serializers.IntegerField()
        filename = serializers.CharField()

    @extend_schema(
        summary="Get a download link",
        description="Roles: Admin, ModelDeveloper, Operator. The URL is valid for ARTIFACT_URL_EXPIRY_SECONDS and "
                    "supports HTTP Range requests. `?redirect=true` answers 302 to it (for `curl -L`). "
                    "409 ARTIFACT_CORRUPT when the integrity scrub found the stored bytes altered.",
        parameters=[OpenApiParameter("redirect", bool)],
        responses={200: OutputSerializer, 302: None, 409: OpenApiResponse(description="ARTIFACT_CORRUPT"),
                   **_errors(401, 403, 404)},
    )
    def get(self, request: Request, model_id: str) -> Response:
        version = selectors.model_version_get(model_id=model_id)
        if not status_ships(version.status):
            raise ConflictError(version_refusal(version) or "", code="ARTIFACT_CORRUPT")
        filename = f"{version.model_id}.{_extension(version)}"
        link = artifact_store().download_link(version.storage_key, filename=filename, request=request)
        if query_flag(request.query_params, "redirect"):
            return HttpResponseRedirect(link.url)
        return Response(self.OutputSerializer({"url": link.url, "expires_at": link.expires_at, "filename": filename,
                                               "sha256": version.sha256, "size_bytes": version.size_bytes}).data)


def _extension(version: ModelVersion) -> str:
    return {"onnx": "onnx", "tflite": "tflite", "coreml": "mlmodel"}.get(version.detected_format, "zip")


class ModelVersionHistoryApi(APIView):
    """All versions of one model, newest (by semantic version) first."""

    required_permission = "models_app.view_modelversion"
    throttle_classes = [MonitorThrottle]
    pagination_class = PageNumberPagination  # documents the page envelope and parameters

    @extend_schema(summary="Version history of a model", description="Roles: all.",
                   responses={200: ModelVersionOutputSerializer(many=True), **_errors(401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        return paginated_response(request=request, view=self, queryset=selectors.model_versions_of(name=name),
                                  serializer_class=ModelVersionOutputSerializer)


class ModelVersionDetailApi(APIView):
    """One version of a model by name and semantic version."""

    required_permission = "models_app.view_modelversion"
    throttle_classes = [MonitorThrottle]

    @extend_schema(summary="Get a version of a model", description="Roles: all.",
                   responses={200: ModelVersionOutputSerializer, **_errors(401, 403, 404)})
    def get(self, request: Request, name: str, version: str) -> Response:
        found = selectors.model_version_get_by_name(name=name, version=version)
        return Response(ModelVersionOutputSerializer(found).data)


class ModelVersionDeprecateApi(APIView):
    """Deprecates a version: it stays stored but is no longer offered for new rollouts."""

    required_permission = "models_app.deprecate_modelversion"

    @extend_schema(summary="Deprecate a version", description="Roles: Admin, ModelDeveloper. Idempotent.",
                   request=None, responses={200: ModelVersionOutputSerializer, **_errors(401, 403, 404)})
    def post(self, request: Request, name: str, version: str) -> Response:
        found = selectors.model_version_get_by_name(name=name, version=version)
        deprecated = services.model_version_deprecate(model_version=found, actor=request.user)
        return Response(ModelVersionOutputSerializer(deprecated).data)


@require_GET
def artifact_signed_download(request: HttpRequest, token: str):
    """Serves a locally stored artifact to whoever holds a valid signed link, with Range support.

    Only used by the filesystem backend; on S3 the links are presigned and go to S3 directly.
    """
    store = artifact_store()
    try:
        claims = signing.loads(token, salt=SIGNED_URL_SALT)
    except signing.BadSignature:
        return JsonResponse(error_body(request, code="INVALID_LINK", message="This download link is invalid."),
                            status=403)
    if claims["exp"] < time.time():
        return JsonResponse(error_body(request, code="LINK_EXPIRED", message="This download link has expired."),
                            status=403)
    if store.is_s3 or not store.exists(claims["key"]):
        return JsonResponse(error_body(request, code="ARTIFACT_NOT_FOUND", message="The artifact is gone."),
                            status=404)
    if ModelVersion.objects.filter(storage_key=claims["key"], status=ModelVersion.Status.CORRUPT).exists():
        # Links outlive the scrub's verdict by up to their expiry: the bytes behind them are refused now.
        return JsonResponse(error_body(request, code="ARTIFACT_CORRUPT",
                                       message="The stored artifact was altered and is no longer served."), status=409)
    path = store.storage.path(claims["key"])
    size = store.storage.size(claims["key"])
    try:
        byte_range = parse_byte_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        response = JsonResponse(error_body(request, code="RANGE_NOT_SATISFIABLE",
                                           message=f"The artifact has {size} bytes."), status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    disposition = f'attachment; filename="{claims["name"]}"'
    if byte_range is None:
        response = FileResponse(open(path, "rb"), content_type="application/octet-stream")  # noqa: SIM115
    else:
        first, last = byte_range
        response = StreamingHttpResponse(_file_slice(path, first, last - first + 1), status=206,
                                         content_type="application/octet-stream")
        response["Content-Range"] = f"bytes {first}-{last}/{size}"
        response["Content-Length"] = str(last - first + 1)
    response["Accept-Ranges"] = "bytes"
    response["Content-Disposition"] = disposition
    return response


def _file_slice(path: str, offset: int, length: int, block: int = 1024 * 1024):
    with open(path, "rb") as handle:
        handle.seek(offset)
        while length > 0:
            data = handle.read(min(block, length))
            if not data:
                return
            length -= len(data)
            yield data
