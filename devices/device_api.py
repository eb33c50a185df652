"""Device-facing endpoints: check-in (the hot path, a plain Django view) and the manifest public key."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from devices import manifests
from devices.credentials import DEVICE_KIND, secret_matches, split_secret
from devices.models import Device
from devices.services import checkin as service
from hotswap.exceptions import ApplicationError, error_body, require_methods
from hotswap.lib.tracing import new_traceparent
from hotswap.observability.context import bind_actor
from hotswap_device.protocol import PROTOCOL_VERSION

logger = logging.getLogger(__name__)


def _error(request: HttpRequest, status: int, code: str, message: str, details=None, **headers) -> JsonResponse:
    response = JsonResponse(error_body(request, code=code, message=message, details=details), status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _authenticate(request: HttpRequest) -> tuple[service.CheckinDevice | None, JsonResponse | None]:
    """The calling device and all its model slots, in one indexed query."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    parts = split_secret(raw, DEVICE_KIND) if scheme == "Device" else None
    if parts is None:
        return None, _error(request, 401, "NOT_AUTHENTICATED", "Send 'Authorization: Device hsd_<prefix>_<secret>'.",
                            WWW_Authenticate="Device")
    prefix, secret = parts
    device = service.checkin_device(prefix=prefix)
    if device is None or not secret_matches(secret, device.key_hash):
        return None, _error(request, 401, "DEVICE_CREDENTIAL_INVALID", "This device credential is unknown or revoked.",
                            WWW_Authenticate="Device")
    if device.status == Device.Status.DECOMMISSIONED:
        return None, _error(request, 403, "DEVICE_DECOMMISSIONED", "This device has been decommissioned.")
    return device, None


def _too_large(request: HttpRequest) -> JsonResponse:
    return _error(request, 413, "PAYLOAD_TOO_LARGE",
                  f"A check-in body may have at most {settings.CHECKIN_MAX_BODY_BYTES} bytes.")


def _chunked(request: HttpRequest) -> bool:
    encoding = request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    return not request.META.get("CONTENT_LENGTH") and "chunked" in encoding


def _body(request: HttpRequest) -> bytes | JsonResponse:
    """The capped body, whether sent with a Content-Length or chunked.

    Django reads no body without a Content-Length (it would have taken a chunked check-in for an empty
    one); gunicorn de-chunks and marks the end of the body (wsgi.input_terminated), so it is read here.
    """
    if not _chunked(request):
        return request.body
    body = request.META["wsgi.input"].read(settings.CHECKIN_MAX_BODY_BYTES + 1)
    return _too_large(request) if len(body) > settings.CHECKIN_MAX_BODY_BYTES else body


@csrf_exempt
@require_methods("POST")
def device_checkin(request: HttpRequest) -> HttpResponse:
    """POST /api/v1/devices/checkin — see devices/PROTOCOL.md §3."""
    if _chunked(request) and not request.META.get("wsgi.input_terminated"):
        return _error(request, 411, "LENGTH_REQUIRED", "Send the check-in with a Content-Length header.")
    if int(request.META.get("CONTENT_LENGTH") or 0) > settings.CHECKIN_MAX_BODY_BYTES:
        return _too_large(request)
    device, failure = _authenticate(request)
    if failure:
        return failure
    bind_actor(f"device:{device.device_id}")  # the actor of this request's log lines
    now = timezone.now()
    body = _body(request)
    if isinstance(body, JsonResponse):
        return body
    try:
        report = service.checkin_parse(body, now=now, slot_models=device.models)
    except ApplicationError as exc:
        return _error(request, exc.status_code, exc.code, exc.message, exc.details)
    if retry_after := service.checkin_record(device=device, report=report, now=now):
        return _error(request, 429, "RATE_LIMITED", f"Too many check-ins; retry in {retry_after} s.",
                      Retry_After=str(retry_after))

    etag = service.checkin_etag(device, now=now)
    traceparent = device.traceparent or new_traceparent()
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    else:
        response = JsonResponse({
            "protocol": PROTOCOL_VERSION,
            "desired": service.checkin_desired(device=device, now=now, request=request),
            "poll_interval_seconds": settings.DEVICE_POLL_INTERVAL_SECONDS,
            "accepted": {"installs": len(report.installs), "metrics": len(report.metrics)},
            "server_time": now.isoformat(),
        })
    response["ETag"] = etag
    response["traceparent"] = traceparent
    return response


@require_methods("GET")
def manifest_public_key(request: HttpRequest) -> JsonResponse:
    """GET /api/v1/devices/manifest-key — the Ed25519 key devices pin."""
    return JsonResponse(manifests.public_key_info())
