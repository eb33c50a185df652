"""The WSGI application: device check-ins take a short road through Django, everything else the full stack.

A fleet of 100,000 devices polling every minute is most of a server's requests, and each would pay for
twelve middleware (sessions, CSRF, messages, per-view HTTP metrics...) and a walk of ~25 URL patterns
that a device call never needs: about 40 % of a check-in's CPU. `DeviceHandler` is Django's own
handler (same request and response classes, signals that recycle database connections, error
handlers) with `DEVICE_MIDDLEWARE` and the device routes resolved once at start.
"""

from __future__ import annotations

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.urls import resolve, reverse
from django.utils.module_loading import import_string

# Named routes served by DeviceHandler; their views authenticate the device themselves.
DEVICE_ROUTES = ("device-checkin",)


class DeviceHandler(WSGIHandler):
    """Serves only the DEVICE_ROUTES, with the short DEVICE_MIDDLEWARE chain."""

    def __init__(self):
        super().__init__()
        self.routes = {reverse(name): resolve(reverse(name)) for name in DEVICE_ROUTES}

    def load_middleware(self, is_async=False):
        # DEVICE_MIDDLEWARE holds plain __call__ middleware (no process_view or process_exception hooks).
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        handler = convert_exception_to_response(self._get_response)
        for path in reversed(settings.DEVICE_MIDDLEWARE):
            handler = convert_exception_to_response(import_string(path)(handler))
        self._middleware_chain = handler

    def resolve_request(self, request):
        request.resolver_match = self.routes[request.path_info]
        return request.resolver_match


class HotSwapApplication:
    """Sends the device routes' paths to a DeviceHandler and every other request to Django's full stack."""

    def __init__(self, full: WSGIHandler):
        self.full = full
        self.device = DeviceHandler()
        self.device_paths = frozenset(self.device.routes)

    def __call__(self, environ, start_response):
        handler = self.device if environ.get("PATH_INFO") in self.device_paths else self.full
        return handler(environ, start_response)
