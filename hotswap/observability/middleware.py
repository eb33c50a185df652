"""Binds the log context of each request and writes one `hotswap.request` line when it ends."""

from __future__ import annotations

import logging
import time

from django.http import HttpRequest, HttpResponse

from hotswap.lib.clientip import client_address
from hotswap.observability import context as log_context
from hotswap.observability import metrics

logger = logging.getLogger("hotswap.request")

# Probes, scrapes and answered check-ins (every device, every minute) are logged at DEBUG only.
QUIET_VIEWS = {"health", "ready", "metrics"}
QUIET_CHECKIN = ("device-checkin", (200, 304))


class RequestContextMiddleware:
    """After RequestIdMiddleware: request id, trace/span ids (from `traceparent`) and actor for every log line."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = getattr(request, "request_id", "") or ""
        trace_id, span_id, parent = log_context.trace_ids(traceparent=request.headers.get("traceparent"),
                                                          request_id=request_id)
        context = log_context.LogContext(request_id=request_id, trace_id=trace_id, span_id=span_id,
                                         parent_span_id=parent, request=request)
        started = time.perf_counter()
        with log_context.bound(context):
            response = self.get_response(request)
            seconds = time.perf_counter() - started
            metrics.request_observe(request, response, seconds)
            self.log(request, response, seconds)
        return response

    @staticmethod
    def log(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
        match = getattr(request, "resolver_match", None)
        view = match.url_name if match else ""
        quiet = view in QUIET_VIEWS or (view == QUIET_CHECKIN[0] and response.status_code in QUIET_CHECKIN[1])
        level = logging.DEBUG if quiet else logging.INFO
        if not logger.isEnabledFor(level):
            return
        logger.log(level, "%s %s %s", request.method, request.path, response.status_code, extra={
            "method": request.method, "path": request.path, "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1), "view": view or "", "client": client_address(request),
        })
