"""OpenTelemetry traces: the exporter chosen by OTEL_TRACES_EXPORTER, span helpers, W3C context across Celery.

A version's life and a rollout are two traces, joined by a span link:

    model.upload ─ model.validate            one trace per upload; the worker continues it from the
                                             task message's `traceparent` header
    distribution.create                      one trace per distribution; its context is
    ├ distribution.execute                   Distribution.traceparent, which every desired state and
    ├ model.swap ─ download, verify, load    so every check-in answer carries: the agent's swap is its
    ├ device.update ⇢ model.swap             child, and the orchestrator's device.update (offer → report)
    │                                        links to the swap the device reported with
    └ distribution.approve, .pause, .resume, an operator's action (the orchestrator's own automatic
      .abort, .rollback ⇢ the request        rollback too), linked to the request that asked for it
    distribution.create ⇢ model.upload       a link, not a parent: one version ships in many
                                             distributions, days apart, each a trace of its own

A span with no parent continues the API request's own `traceparent` header (a CI pipeline's trace).
distribution.execute is recorded only for orchestrator steps that changed something: an idle tick
every few seconds over a week-long rollout would bury the steps that matter.

OTEL_TRACES_EXPORTER=none (the default) installs no SDK: every helper returns at its first line, the
Celery hooks do nothing, and the check-in path has no tracing code at all.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from celery.signals import before_task_publish, task_postrun, task_prerun, worker_process_shutdown
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hotswap.lib.tracing import valid_traceparent
from hotswap.observability import context as log_context
from hotswap_device.tracing import TracingConfigError, parent_context, provider_from_env

F = TypeVar("F", bound=Callable[..., Any])
_propagator = TraceContextTextMapPropagator()
_provider: Any = None  # the SDK TracerProvider spans go to; None: tracing is off
_tracer: Any = None


def configure(environ: Mapping[str, str] = os.environ) -> None:
    """Once per process at start-up (hotswap/celery.py): web, worker, beat and manage.py alike."""
    try:
        provider = provider_from_env(environ, service_name="hotswap")
    except TracingConfigError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    if provider is not None:
        install(provider)
        trace.set_tracer_provider(provider)  # for any library that traces through the API's global


def install(provider: Any) -> Any:
    """Sends this process's spans to `provider` (None: tracing off); returns the previous one (tests swap them)."""
    global _provider, _tracer
    previous = _provider
    _provider, _tracer = provider, (provider.get_tracer("hotswap") if provider is not None else None)
    return previous


def enabled() -> bool:
    return _provider is not None


def clock() -> int:
    """Now in nanoseconds since the epoch, the unit of span start and end times."""
    return time.time_ns()


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (attributes or {}).items() if value is not None}


def _span_context(traceparent: str) -> Any:
    return trace.get_current_span(parent_context(traceparent)).get_span_context()


def _links(traceparents: Iterable[str], parent: Any) -> list[trace.Link]:
    """Links to the valid traceparents, other than the parent itself."""
    parent_ids = (parent.trace_id, parent.span_id) if parent is not None else None
    links = []
    for value in traceparents:
        context = _span_context(valid_traceparent(value))
        if context.is_valid and (context.trace_id, context.span_id) != parent_ids:
            links.append(trace.Link(context))
    return links


def _request_traceparent() -> str:
    """The `traceparent` the current API request came with: a CI pipeline's trace continues into ours."""
    current = log_context.current()
    request = current.request if current is not None else None
    return valid_traceparent(request.headers.get("traceparent")) if request is not None else ""


@contextlib.contextmanager
def span(name: str, *, parent: str | None = None, links: Iterable[str] = (),
         attributes: Mapping[str, Any] | None = None, start_time: int | None = None) -> Iterator[Any]:
    """A current span for the block: a child of `parent` (a traceparent; "" starts a trace) or, by default,
    of the current span, else of the API request's own `traceparent`."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    if parent is None and not trace.get_current_span().get_span_context().is_valid:
        parent = _request_traceparent()
    context = parent_context(parent) if parent is not None else None
    parent_span = trace.get_current_span(context).get_span_context()
    with _tracer.start_as_current_span(name, context=context, links=_links(links, parent_span),
                                       attributes=_clean(attributes), start_time=start_time) as current:
        yield current


def traced(name: str) -> Callable[[F], F]:
    """Runs the function in a span named `name` (attributes and links are added from inside with annotate/link)."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _provider is None:
                return function(*args, **kwargs)
            with span(name):
                return function(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def record(name: str, *, parent: str, start_time: int, end_time: int | None = None, links: Iterable[str] = (),
           attributes: Mapping[str, Any] | None = None, error: str = "") -> None:
    """A span written after the fact (its times given): for work whose worth is known only once it is done."""
    if _provider is None:
        return
    context = parent_context(parent)
    current = _tracer.start_span(name, context=context, start_time=start_time, attributes=_clean(attributes),
                                 links=_links(links, trace.get_current_span(context).get_span_context()))
    if error:
        current.set_status(trace.Status(trace.StatusCode.ERROR, error[:200]))
    current.end(end_time=end_time)


def annotate(**attributes: Any) -> None:
    """Sets attributes on the current span (None values left out)."""
    if _provider is not None:
        trace.get_current_span().set_attributes(_clean(attributes))


def link(traceparent: str) -> None:
    """Links the current span to another trace's span (e.g. a distribution to its version's upload)."""
    if _provider is not None:
        for found in _links([traceparent], trace.get_current_span().get_span_context()):
            trace.get_current_span().add_link(found.context)


def origin() -> str:
    """The traceparent of the work under way: the current span's, else the API request's own (a CI pipeline's).

    For a span placed in another trace (an operator's action in its distribution's), to link back to.
    """
    if _provider is None:
        return ""
    return traceparent() or _request_traceparent()


def traceparent() -> str:
    """The current span's W3C traceparent, "" when there is none (tracing off)."""
    if _provider is None:
        return ""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def bind(function: Callable[[], Any]) -> Callable[[], Any]:
    """`function` to run later (transaction.on_commit) in today's trace context, which a task message then carries."""
    if _provider is None:
        return function
    captured = otel_context.get_current()

    def run() -> Any:
        token = otel_context.attach(captured)
        try:
            return function()
        finally:
            otel_context.detach(token)
    return run


# --- Celery: the publisher writes the current context into the message, the worker continues it ---------------

_attached: dict[str, object] = {}


@before_task_publish.connect(weak=False)
def _inject(headers: dict | None = None, **kwargs: Any) -> None:
    if _provider is not None and headers is not None:
        _propagator.inject(headers)


@task_prerun.connect(weak=False)
def _extract(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    request = getattr(task, "request", None)
    if _provider is None or not task_id or request is None or getattr(request, "is_eager", False):
        return  # an eager task already runs in its caller's context
    value = getattr(request, "traceparent", None) or (getattr(request, "headers", None) or {}).get("traceparent")
    if valid_traceparent(value):
        _attached[task_id] = otel_context.attach(parent_context(value))


@task_postrun.connect(weak=False)
def _detach(task_id: str | None = None, **kwargs: Any) -> None:
    token = _attached.pop(task_id or "", None)
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


@worker_process_shutdown.connect(weak=False)
def _flush(**kwargs: Any) -> None:
    # A pool process may end without running atexit: export what is still batched.
    if _provider is not None:
        _provider.force_flush()
