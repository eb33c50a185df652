"""Optional OpenTelemetry spans for the agent; without opentelemetry it hands the server's traceparent back as is.

A device may not have opentelemetry at all, so nothing here needs it: every helper degrades to a
pass-through. With the SDK installed and OTEL_TRACES_EXPORTER=console or otlp, `python -m
hotswap_device` exports `model.swap` as a child of the check-in answer's `traceparent` (the
distribution's trace), with `model.download`, `model.verify` and `model.load` under it, and its
install reports carry model.swap's own traceparent, which the server's `device.update` span links
to. The exporter set-up (`provider_from_env`) is shared with the server, which may import this
module; the agent imports nothing from the project.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import IO, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - a device without opentelemetry
    trace = None  # type: ignore[assignment]

EXPORTERS = ("none", "console", "otlp")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
# The provider spans go to: set by configure() (the command line) or use_provider() (tests). None: no spans.
_provider: Any = None


class TracingConfigError(ValueError):
    """OTEL_TRACES_EXPORTER names an exporter this build does not know."""


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """OTEL_TRACES_EXPORTER as a list (`console,otlp` is allowed); [] for none, the default."""
    names = [name.strip().lower() for name in (environ.get("OTEL_TRACES_EXPORTER") or "none").split(",")]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)!s}; "
                                 f"use {', '.join(EXPORTERS)}")
    return [name for name in names if name != "none"]


def _one_line(span: Any) -> str:
    # One JSON object per line: readable with grep and jq next to JSON log lines.
    return span.to_json(indent=None) + os.linesep


def provider_from_env(environ: Mapping[str, str] = os.environ, *, service_name: str,
                      out: IO[str] | None = None) -> Any:
    """An SDK TracerProvider exporting as OTEL_TRACES_EXPORTER says, or None (none, or no SDK installed).

    console prints each span as one JSON line when it ends (to `out`, default stdout); otlp sends
    batches over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the exporter reads its OTEL_EXPORTER_OTLP_*
    variables itself; OTEL_EXPORTER_OTLP_HEADERS_FILE holds the headers, e.g. an API key, in a file).
    """
    names = exporter_names(environ)
    if not names or trace is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": environ.get("OTEL_SERVICE_NAME") or service_name}))
    if "console" in names:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out or sys.stdout,
                                                                            formatter=_one_line)))
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.util.re import parse_env_headers

        headers = None
        if environ.get("OTEL_EXPORTER_OTLP_HEADERS_FILE"):
            with open(environ["OTEL_EXPORTER_OTLP_HEADERS_FILE"], encoding="utf-8") as handle:
                headers = dict(parse_env_headers(handle.read().strip(), liberal=True))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(headers=headers)))
    return provider


def configure(environ: Mapping[str, str] = os.environ, *, service_name: str = "hotswap-agent") -> bool:
    """Sets the agent's exporter from OTEL_TRACES_EXPORTER (service name `hotswap-agent`); True when tracing."""
    provider = provider_from_env(environ, service_name=service_name)
    if provider is not None:
        use_provider(provider)
    return provider is not None


def enabled() -> bool:
    """Whether spans are recorded (a provider is set)."""
    return _provider is not None


def use_provider(provider: Any) -> Any:
    """Makes the agent's spans go to `provider` (None: no spans); returns the previous one."""
    global _provider
    previous, _provider = _provider, provider
    return previous


def parent_context(traceparent: str) -> Any:
    """The context continuing `traceparent`; an empty one (a new trace) when it is not a valid one."""
    carrier = {"traceparent": traceparent} if _TRACEPARENT.match(traceparent or "") else {}
    return TraceContextTextMapPropagator().extract(carrier, context=otel_context.Context())


@contextlib.contextmanager
def span(name: str, *, traceparent: str | None = None, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """A current span for the block (None without tracing); `traceparent` makes it that context's child."""
    if _provider is None:
        yield None
        return
    tracer = _provider.get_tracer("hotswap_device")
    context = parent_context(traceparent) if traceparent is not None else None
    clean = {key: value for key, value in (attributes or {}).items() if value is not None}
    with tracer.start_as_current_span(name, context=context, attributes=clean) as current:
        yield current


def traceparent_of(current: Any, fallback: str = "") -> str:
    """The span's W3C traceparent while it records, else `fallback` (the server's, passed through)."""
    if current is None or not current.is_recording():
        return fallback
    context = current.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def annotate(current: Any, **attributes: Any) -> None:
    """Sets attributes on the span (no-op without tracing); None values are left out."""
    if current is not None:
        current.set_attributes({key: value for key, value in attributes.items() if value is not None})


def failed(current: Any, message: str) -> None:
    """Marks the span as failed (no-op without tracing)."""
    if current is not None:
        current.set_status(trace.Status(trace.StatusCode.ERROR, message[:200]))
