"""Request id middleware (every request gets an id that errors and logs carry) and the query string's edge check."""

import re
import uuid

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseNotFound, JsonResponse

from hotswap.exceptions import error_body
from hotswap.lib.untrusted import printable, rejected, unstorable, unstorable_items

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
    """Refuses a path, query string or URL-encoded form holding text PostgreSQL cannot store, before any view reads it.

    URL ids, filters, searches and console forms go straight into queries, where a NUL is a 500. JSON
    and multipart bodies are checked by their parsers (hotswap/lib/parsers.py); multipart is not read here
    because the upload views stream it through their own handlers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if unstorable(request.path):  # an id in a URL goes straight into a query too; no resource has that name
            message = f"No resource at {printable(request.path)}."
            if request.path.startswith("/api/"):
                return JsonResponse(error_body(request, code="NOT_FOUND", message=message), status=404)
            return HttpResponseNotFound(message, content_type="text/plain")
        details = unstorable_items(request.GET.lists())
        if not details and request.content_type == "application/x-www-form-urlencoded":
            details = unstorable_items(request.POST.lists())
        if not details:
            return self.get_response(request)
        if request.path.startswith("/api/"):
            return JsonResponse(error_body(request, code="VALIDATION_ERROR", message=rejected(details).message,
                                           details=details), status=400)
        return HttpResponseBadRequest("Bad request: " + rejected(details).message, content_type="text/plain")

