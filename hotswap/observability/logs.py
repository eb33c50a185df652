"""Log records with context (request id, trace/span ids, actor) as JSON lines, or as readable text for dev mode.

LOG_FORMAT=json (the default) writes one JSON object per line through python-json-logger;
LOG_FORMAT=console (runstack's default) writes `time level logger message key=value ...`.
Celery tasks get the same context: the task id stands for the request id.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery.signals import task_postrun, task_prerun
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from hotswap.observability import context as log_context

# Record attributes that are not fields: Django's `request` object and django.server's `server_time`.
_SKIPPED = {*RESERVED_ATTRS, "request", "server_time"}
# A terminal shows the message alone: Celery's `data` repeats it as a dict.
_CONSOLE_SKIPPED = {*_SKIPPED, "message", "data"}


class ContextFilter(logging.Filter):
    """Adds the current request's or task's ids and actor to every record (a field set by `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context.current()
        ids = log_context.otel_ids()
        if context is None and ids is None:
            return True
        trace_id, span_id = ids or (context.trace_id, context.span_id)  # type: ignore[union-attr]
        values = {"trace_id": trace_id, "span_id": span_id}
        if context is not None:
            values.update(request_id=context.request_id, actor=log_context.actor_of(context), task=context.task)
        for name, value in values.items():
            if value and not hasattr(record, name):
                setattr(record, name, value)
        return True


class PeriodicTaskFilter(logging.Filter):
    """Celery's routine lines about periodic tasks (beat sending one, a worker receiving it, its success) at DEBUG.

    Beat runs them every few seconds (CELERY_BEAT_SCHEDULE): at INFO they were most of a terminal's lines and
    told a person nothing. Their failures and retries, and what the tasks log themselves, keep their level.
    """

    ROUTINE = {"celery.worker.strategy": " received", "celery.app.trace": " succeeded in "}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self.routine(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    def routine(self, record: logging.LogRecord) -> bool:
        if record.name == "celery.beat":
            return str(record.msg).startswith("Scheduler: Sending due task")
        marker = self.ROUTINE.get(record.name)
        if marker is None or marker not in str(record.msg) or not isinstance(record.args, dict):
            return False
        from django.conf import settings

        return record.args.get("name") in {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}


class JsonFormatter(_JsonFormatter):
    """{"timestamp", "level", "logger", "message", context fields, then any `extra=` fields}."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"},
                         reserved_attrs=sorted(_SKIPPED), json_ensure_ascii=False, **kwargs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


class ConsoleFormatter(logging.Formatter):
    """`2026-11-24 12:00:00,123 INFO logger message key=value ...` for people at a terminal."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        said = set(record.getMessage().split())
        # A field the message already says as one of its words (a request line's method, path and status) is
        # not said twice.
        extras = {key: value for key, value in vars(record).items()
                  if key not in _CONSOLE_SKIPPED and not key.startswith("_") and str(value) not in said}
        if not extras:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the key=value pairs
        pairs = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{head} {pairs}{newline}{rest}"


# What was current before each running task (an eager task runs inside a request).
_previous: dict[str, log_context.LogContext | None] = {}


@task_prerun.connect(weak=False)
def _task_started(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if not task_id:
        return
    headers = getattr(getattr(task, "request", None), "headers", None) or {}
    trace_id, span_id, parent = log_context.trace_ids(traceparent=headers.get("traceparent"), request_id=task_id)
    context = log_context.LogContext(request_id=task_id, trace_id=trace_id, span_id=span_id, parent_span_id=parent,
                                     task=getattr(task, "name", ""))
    _previous[task_id] = log_context.activate(context)


@task_postrun.connect(weak=False)
def _task_finished(task_id: str | None = None, **kwargs: Any) -> None:
    if task_id in _previous:
        log_context.activate(_previous.pop(task_id))
