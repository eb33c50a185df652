"""What every log line of a request or task carries: request id, trace and span ids, actor (a contextvar).

Trace ids come from the active OpenTelemetry span when opentelemetry is installed and a span is
recording; otherwise from the W3C `traceparent` the request carries, else from the request id, so
a log search by the error body's `trace_id` finds the request's lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.utils.functional import LazyObject, empty

from hotswap.lib.tracing import TRACEPARENT_PATTERN, valid_traceparent

try:  # OpenTelemetry is optional: when its SDK runs, its span ids win.
    from opentelemetry import trace as otel_trace
except ImportError:  # pragma: no cover - depends on what is installed
    otel_trace = None

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LogContext:
    """The ids and actor of the request or task being handled."""

    request_id: str
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    actor: str = ""
    task: str = ""
    request: Any = None  # the HttpRequest, read lazily for its user (DRF authenticates inside the view)


_current: ContextVar[LogContext | None] = ContextVar("hotswap_log_context", default=None)


def trace_ids(*, traceparent: str | None, request_id: str) -> tuple[str, str, str]:
    """(trace_id, span_id, parent_span_id) for a unit of work: the caller's trace, or one named after the request."""
    span_id = secrets.token_hex(8)
    match = TRACEPARENT_PATTERN.match(valid_traceparent(traceparent))
    if match:
        return match.group(1), span_id, match.group(2)
    lowered = request_id.lower().replace("-", "")
    trace_id = lowered if _HEX32.match(lowered) and set(lowered) != {"0"} else (
        hashlib.sha256(request_id.encode()).hexdigest()[:32])
    return trace_id, span_id, ""


@contextlib.contextmanager
def bound(context: LogContext) -> Iterator[LogContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current() -> LogContext | None:
    return _current.get()


def activate(context: LogContext | None) -> LogContext | None:
    """Makes `context` current and returns the one it replaces (for hooks that cannot use `bound`)."""
    previous = _current.get()
    _current.set(context)
    return previous


def bind_actor(actor: str) -> None:
    """Names who acts in the current request when no Django user does (e.g. `device:cam-0001`)."""
    context = _current.get()
    if context is not None:
        context.actor = actor


def otel_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current OpenTelemetry span, when there is a valid one."""
    if otel_trace is None:
        return None
    span_context = otel_trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def actor_of(context: LogContext) -> str:
    """The bound actor, else the request's user once something has authenticated it (never a query from here)."""
    if context.actor or context.request is None:
        return context.actor
    user = vars(context.request).get("user")
    if user is None or (isinstance(user, LazyObject) and user._wrapped is empty):
        return ""
    return user.get_username() if user.is_authenticated else ""
