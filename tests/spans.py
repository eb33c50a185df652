"""Spans in tests: an in-memory exporter behind the server's or the agent's tracing, and lookups in what it got."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextmanager
def recording(*installs: Callable[[Any], Any]) -> Iterator[InMemorySpanExporter]:
    """Spans go to an in-memory exporter while inside; each `install(provider)` returns the provider it replaced
    (hotswap.observability.tracing.install, hotswap_device.tracing.use_provider), put back on leaving."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = [install(provider) for install in installs]
    try:
        yield exporter
    finally:
        for install, replaced in zip(installs, previous, strict=True):
            install(replaced)
        provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def one(exporter: InMemorySpanExporter, name: str):
    found = named(exporter, name)
    assert len(found) == 1, f"{name}: {[s.name for s in exporter.get_finished_spans()]}"
    return found[0]


def traceparent_of(span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def is_child(span, parent) -> bool:
    return (span.parent is not None and span.parent.span_id == parent.context.span_id
            and span.context.trace_id == parent.context.trace_id)


def children(exporter: InMemorySpanExporter, parent) -> list:
    """The parent's children, in the order they started."""
    return sorted((span for span in exporter.get_finished_spans() if is_child(span, parent)),
                  key=lambda span: span.start_time)


def links_to(span, target) -> bool:
    return any(link.context.span_id == target.context.span_id and link.context.trace_id == target.context.trace_id
               for link in span.links)
