"""Request id middleware (every request gets an id that errors and logs carry) and the query string's edge check."""

import re
import uuid

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from hotswap.exceptions import error_body
from hotswap.lib.untrusted import rejected, unstorable_items

_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIdMiddleware:
    """Takes X-Request-ID from a trusted proxy when well-formed, otherwise makes one; echoes it back."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


class UnstorableInputMiddleware:
    """Refuses a query string (or a URL-encoded form) holding text PostgreSQL cannot store, before any view reads it.

    Filters, searches and console forms pass these values straight to queries, where a NUL is a 500. JSON
    and multipart bodies are checked by their parsers (hotswap/lib/parsers.py); multipart is not read here
    because the upload views stream it through their own handlers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        details = unstorable_items(request.GET.lists())
        if not details and request.content_type == "application/x-www-form-urlencoded":
            details = unstorable_items(request.POST.lists())
        if not details:
            return self.get_response(request)
        if request.path.startswith("/api/"):
            return JsonResponse(error_body(request, code="VALIDATION_ERROR", message=rejected(details).message,
                                           details=details), status=400)
        return HttpResponseBadRequest("Bad request: " + rejected(details).message, content_type="text/plain")

