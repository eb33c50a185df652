"""One ApplicationError and one handler, so every API error has the same shape."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """A business-rule failure the client can act on; rendered as the standard error body."""

    code = "APPLICATION_ERROR"
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None,
                 details: list[dict[str, str]] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status_code = status_code or self.status_code
        self.details = details or []
        self.extra = extra or {}


class NotFoundError(ApplicationError):
    code = "NOT_FOUND"
    status_code = status.HTTP_404_NOT_FOUND


class ConflictError(ApplicationError):
    code = "CONFLICT"
    status_code = status.HTTP_409_CONFLICT


class PayloadTooLargeError(ApplicationError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class ServiceUnavailableError(ApplicationError):
    code = "SERVICE_UNAVAILABLE"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE


_DRF_CODES = {
    exceptions.ValidationError: "VALIDATION_ERROR",
    exceptions.ParseError: "MALFORMED_REQUEST",
    exceptions.NotAuthenticated: "NOT_AUTHENTICATED",
    exceptions.AuthenticationFailed: "AUTHENTICATION_FAILED",
    exceptions.PermissionDenied: "PERMISSION_DENIED",
    exceptions.NotFound: "NOT_FOUND",
    exceptions.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    exceptions.NotAcceptable: "NOT_ACCEPTABLE",
    exceptions.UnsupportedMediaType: "UNSUPPORTED_MEDIA_TYPE",
    exceptions.Throttled: "RATE_LIMITED",
}


def flatten_details(detail: Any, field: str = "") -> list[dict[str, str]]:
    """DRF's nested {field: [messages]} becomes [{"field": "a.b", "message": "..."}]."""
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            name = "" if key in ("non_field_errors", "__all__") else str(key)
            out += flatten_details(value, f"{field}.{name}" if field and name else (name or field))
        return out
    if isinstance(detail, (list, tuple)):
        out = []
        for index, value in enumerate(detail):
            nested = isinstance(value, (dict, list)) and field
            out += flatten_details(value, f"{field}[{index}]" if nested else field)
        return out
    return [{"field": field, "message": str(detail)}]


def error_body(request: HttpRequest | None, *, code: str, message: str,
               details: list[dict[str, str]] | None = None, extra: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "details": details or [],
        "trace_id": getattr(request, "request_id", None),
        "timestamp": timezone.now().isoformat(),
    }
    body.update(extra or {})
    return {"error": body}


def api_exception_handler(exc: Exception, context: dict) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception, known or not, in the standard shape."""
    request = context.get("request")
    headers: dict[str, str] = {}
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(request, code=exc.code, message=exc.message, details=exc.details, extra=exc.extra),
            status=exc.status_code,
        )
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(error_body(request, code="PAYLOAD_TOO_LARGE", message=str(exc)), status=413)
    elif isinstance(exc, SuspiciousOperation):
        # Django's parsers refuse a body beyond DATA_UPLOAD_MAX_NUMBER_FIELDS / _FILES (TooManyFieldsSent,
        # TooManyFilesSent) with these; Django itself answers every SuspiciousOperation with a 400.
        return Response(error_body(request, code="MALFORMED_REQUEST", message=str(exc) or "Bad request."),
                        status=400)

    if isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "API_ERROR")
        if isinstance(exc, exceptions.ValidationError):
            details = flatten_details(exc.detail)
            message = "The request is invalid: " + "; ".join(
                f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in details
            )
        elif isinstance(exc.detail, dict):  # e.g. simplejwt: {"detail": ..., "code": ..., "messages": [...]}
            details, message = [], str(exc.detail.get("detail") or next(iter(exc.detail.values()), ""))
        else:
            details, message = [], str(exc.detail)
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait) + (exc.wait % 1 > 0))
        return Response(error_body(request, code=code, message=message, details=details),
                        status=exc.status_code, headers=headers)

    logger.exception("unhandled error", extra={"request_id": getattr(request, "request_id", None)})
    return Response(error_body(request, code="INTERNAL_ERROR", message="An unexpected error occurred."),
                    status=500)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def json_handler404(request: HttpRequest, exception: Exception | None = None):
    if not _is_api(request):
        from django.views.defaults import page_not_found

        return page_not_found(request, exception)
    return JsonResponse(error_body(request, code="NOT_FOUND", message=f"No resource at {request.path}."), status=404)


def json_handler500(request: HttpRequest):
    if not _is_api(request):
        from django.views.defaults import server_error

        return server_error(request)
    return JsonResponse(error_body(request, code="INTERNAL_ERROR", message="An unexpected error occurred."),
                        status=500)


def json_handler400(request: HttpRequest, exception: Exception | None = None):
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse(error_body(request, code="PAYLOAD_TOO_LARGE", message=str(exception)), status=413)
    if not _is_api(request):
        from django.views.defaults import bad_request

        return bad_request(request, exception)
    return JsonResponse(error_body(request, code="BAD_REQUEST", message=str(exception) or "Bad request."),
                        status=400)


def require_methods(*methods: str) -> Callable:
    """Django's require_http_methods for plain API views: the 405 carries the error shape and the Allow header."""
    allowed = ", ".join(methods)

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method in methods:
                return view(request, *args, **kwargs)
            response = JsonResponse(error_body(request, code="METHOD_NOT_ALLOWED",
                                               message=f"Method {request.method} is not allowed here; use {allowed}."),
                                    status=405)
            response["Allow"] = allowed
            return response

        return checked

    return decorator
