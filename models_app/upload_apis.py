"""Upload session API: start or resume, part targets, local part bodies, complete, abort (see upload_sessions.py)."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hotswap.accounts.throttles import UploadThrottle
from hotswap.lib.parsers import JSONParser
from models_app import upload_sessions
from models_app.apis import ModelVersionOutputSerializer, VersionFieldsSerializer
from models_app.models import UploadSession
from models_app.upload_sessions import SessionView

PERMISSION = "models_app.upload_modelversion"
BODY_CHUNK = 1024 * 1024
NOT_FOUND = OpenApiResponse(description="UPLOAD_NOT_FOUND: no such session of yours (another user's is not shown)")
ENDED = OpenApiResponse(description="UPLOAD_COMPLETED / UPLOAD_ABORTED: the session has ended")
EXPIRED = OpenApiResponse(description="UPLOAD_EXPIRED: the session expired and its parts were deleted")


class UploadSessionOutputSerializer(serializers.Serializer):
    """An upload session: what to send (part_size, part_count), what is stored already, and what it made."""

    id = serializers.UUIDField(source="session.id")
    status = serializers.ChoiceField(source="session.status", choices=UploadSession.Status.choices)
    name = serializers.CharField(source="session.name")
    version = serializers.CharField(source="session.version")
    size = serializers.IntegerField(source="session.size")
    sha256 = serializers.CharField(source="session.sha256")
    part_size = serializers.IntegerField(source="session.part_size")
    part_count = serializers.IntegerField(source="session.part_count")
    parts_done = serializers.ListField(child=serializers.IntegerField(),
                                       help_text="Parts stored at their exact size (asked of the store each time).")
    expires_at = serializers.DateTimeField(source="session.expires_at")
    storage = serializers.ChoiceField(source="session.storage", choices=UploadSession.Storage.choices)
    model_version = ModelVersionOutputSerializer(source="session.model_version", allow_null=True)


def _answer(view: SessionView, code: int) -> Response:
    return Response(UploadSessionOutputSerializer(view).data, status=code)


class UploadSessionStartApi(APIView):
    """Starts an upload session, or answers the caller's open one for the same file (resume)."""

    required_permission = PERMISSION
    parser_classes = [JSONParser]
    throttle_classes = [UploadThrottle]

    class InputSerializer(VersionFieldsSerializer):
        size = serializers.IntegerField(min_value=1, help_text="Bytes in the artifact (at most ARTIFACT_MAX_BYTES).")
        filename = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")

    @extend_schema(
        summary="Start or resume an upload session",
        description="Roles: Admin, ModelDeveloper. For artifacts of any size up to ARTIFACT_MAX_BYTES: the parts "
                    "go straight to S3 (presigned URLs) or, on local storage, to the API, in any order and in "
                    "parallel. 201 for a new session; 200 with your open session for the same name+version+sha256+"
                    "size (a re-run resumes: send only the parts missing from `parts_done`), or with a completed "
                    "one when that version already exists with this SHA-256. The SHA-256 is verified by the "
                    "validation worker. Errors: 400 ARTIFACT_TOO_LARGE / FRAMEWORK_MISMATCH / VALIDATION_ERROR, "
                    "409 VERSION_EXISTS / VERSION_CORRUPT, 503 STORAGE_UNAVAILABLE. Rate limit: refused once "
                    "THROTTLE_UPLOAD new versions were accepted for you in the window; starting a session counts "
                    "nothing.",
        request=InputSerializer,
        responses={201: UploadSessionOutputSerializer, 200: UploadSessionOutputSerializer,
                   409: OpenApiResponse(description="VERSION_EXISTS"),
                   503: OpenApiResponse(description="STORAGE_UNAVAILABLE")},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        fields = {name: data.pop(name) for name in ("name", "version", "size", "sha256", "filename")}
        view, created = upload_sessions.upload_session_start(owner=request.user, metadata=data, **fields)
        return _answer(view, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class UploadSessionGetApi(APIView):
    """One of your upload sessions, with the parts its store holds."""

    required_permission = PERMISSION

    @extend_schema(summary="Get an upload session",
                   description="Roles: Admin, ModelDeveloper (your own sessions). `parts_done` comes from the store "
                               "(S3 ListParts, or the part files). An open session past `expires_at` shows as "
                               "expired (its parts are deleted then).",
                   responses={200: UploadSessionOutputSerializer, 404: NOT_FOUND,
                              503: OpenApiResponse(description="STORAGE_UNAVAILABLE")})
    def get(self, request: Request, session_id) -> Response:
        session = upload_sessions.upload_session_get(owner=request.user, session_id=session_id)
        return _answer(upload_sessions.upload_session_view(session), status.HTTP_200_OK)


class UploadSessionAbortApi(APIView):
    """Aborts one of your upload sessions and deletes its parts."""

    required_permission = PERMISSION

    @extend_schema(summary="Abort an upload session",
                   description="Roles: Admin, ModelDeveloper (your own sessions). Deletes every part stored; a "
                               "session that already ended stays as it is (204 again).",
                   responses={204: None, 404: NOT_FOUND})
    def delete(self, request: Request, session_id) -> Response:
        session = upload_sessions.upload_session_get(owner=request.user, session_id=session_id)
        upload_sessions.upload_session_abort(session=session)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UploadSessionPartsApi(APIView):
    """Where to PUT parts: presigned S3 UploadPart URLs, or the API's part endpoint on local storage."""

    required_permission = PERMISSION
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        numbers = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=10_000),
                                        min_length=1, max_length=1000, help_text="Part numbers, 1-based.")

    class OutputSerializer(serializers.Serializer):
        class PartSerializer(serializers.Serializer):
            number = serializers.IntegerField()
            size = serializers.IntegerField(help_text="Send exactly this many bytes.")
            url = serializers.URLField()
            method = serializers.CharField(default="PUT")
            auth = serializers.BooleanField(help_text="Send your Authorization header (local storage) or none (S3).")

        parts = PartSerializer(many=True)
        expires_at = serializers.DateTimeField()

    @extend_schema(summary="Get part upload URLs",
                   description="Roles: Admin, ModelDeveloper (your own sessions). PUT exactly `size` bytes of each "
                               "part to its `url` (S3 answers with an ETag; nothing more to report). Parts may go in "
                               "any order, in parallel; a part sent again replaces the earlier copy. Errors: 400 "
                               "VALIDATION_ERROR (a number outside 1..part_count), 404, 409 UPLOAD_COMPLETED / "
                               "UPLOAD_ABORTED, 410 UPLOAD_EXPIRED. Not rate limited.",
                   request=InputSerializer,
                   responses={200: OutputSerializer, 404: NOT_FOUND, 409: ENDED, 410: EXPIRED})
    def post(self, request: Request, session_id) -> Response:
        session = upload_sessions.upload_session_get(owner=request.user, session_id=session_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)

        def local_url(number: int) -> str:
            return request.build_absolute_uri(reverse("upload-part", kwargs={"session_id": session.pk,
                                                                            "number": number}))

        targets, expires_at = upload_sessions.upload_session_part_targets(
            session=session, numbers=serializer.validated_data["numbers"], local_url=local_url)
        parts = [{"number": t.number, "size": t.size, "url": t.url, "method": "PUT", "auth": t.auth} for t in targets]
        return Response(self.OutputSerializer({"parts": parts, "expires_at": expires_at}).data)


class _RawBody(BaseParser):
    """Accepts any body and parses none of it: the view streams the request itself."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class UploadSessionPartPutApi(APIView):
    """Local storage: one part's bytes, streamed to a part file."""

    required_permission = PERMISSION
    parser_classes = [_RawBody]

    class OutputSerializer(serializers.Serializer):
        number = serializers.IntegerField()
        size = serializers.IntegerField()

    @extend_schema(summary="Upload a part (local storage)",
                   description="Roles: Admin, ModelDeveloper (your own sessions). Only for sessions whose storage is "
                               "`local`: the body is exactly the part's bytes (Content-Length = its size). A part "
                               "sent again replaces the earlier one. Errors: 400 PART_SIZE_MISMATCH / "
                               "VALIDATION_ERROR, 404, 409 UPLOAD_COMPLETED / UPLOAD_ABORTED / UPLOAD_PART_ELSEWHERE "
                               "(an S3 session), 410 UPLOAD_EXPIRED. Not rate limited.",
                   request={"application/octet-stream": OpenApiTypes.BINARY},
                   responses={200: OutputSerializer, 404: NOT_FOUND, 409: ENDED, 410: EXPIRED})
    def put(self, request: Request, session_id, number: int) -> Response:
        session = upload_sessions.upload_session_get(owner=request.user, session_id=session_id)
        length = request.META.get("CONTENT_LENGTH")
        raw = request._request

        def chunks():
            while chunk := raw.read(BODY_CHUNK):
                yield chunk

        size = upload_sessions.upload_session_part_receive(
            session=session, number=number, length=int(length) if (length or "").isdigit() else None, chunks=chunks())
        return Response(self.OutputSerializer({"number": number, "size": size}).data)


class UploadSessionCompleteApi(APIView):
    """Assembles the parts into the artifact and records the version, which then goes to validation."""

    required_permission = PERMISSION
    throttle_classes = [UploadThrottle]

    @extend_schema(summary="Complete an upload session",
                   description="Roles: Admin, ModelDeveloper (your own sessions). 201 with the session (completed, "
                               "`model_version` set): the version is `uploaded` and goes to validation, whose worker "
                               "hashes the stored bytes; a SHA-256 mismatch marks it corrupt and deletes the object "
                               "(it never ships). Errors: 400 UPLOAD_INCOMPLETE (each missing or wrong-size part in "
                               "`details`; the session stays open), 400 INVALID_ARTIFACT / FRAMEWORK_MISMATCH (the "
                               "session is aborted, nothing stays stored), 404, 409 UPLOAD_COMPLETED (complete "
                               "twice) / UPLOAD_ABORTED / VERSION_EXISTS, 410 UPLOAD_EXPIRED, 429 when your quota "
                               "of accepted uploads (THROTTLE_UPLOAD) is used up (the session stays open).",
                   request=None,
                   responses={201: UploadSessionOutputSerializer, 200: UploadSessionOutputSerializer,
                              400: OpenApiResponse(description="UPLOAD_INCOMPLETE / INVALID_ARTIFACT / "
                                                               "FRAMEWORK_MISMATCH"),
                              404: NOT_FOUND, 409: ENDED, 410: EXPIRED,
                              503: OpenApiResponse(description="STORAGE_UNAVAILABLE")})
    def post(self, request: Request, session_id) -> Response:
        session = upload_sessions.upload_session_get(owner=request.user, session_id=session_id)
        view, created = upload_sessions.upload_session_complete(session=session)
        if created:
            UploadThrottle.accepted(request, self)
        return _answer(view, status.HTTP_201_CREATED if created else status.HTTP_200_OK)
