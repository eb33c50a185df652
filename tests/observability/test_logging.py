"""Log lines: JSON (or readable text) with the request id, trace and span ids and actor of the request or task."""

from __future__ import annotations

import io
import json
import logging

import pytest
from celery import shared_task

from hotswap.observability import context as log_context
from hotswap.observability.logs import ConsoleFormatter, ContextFilter, JsonFormatter
from tests.devices.checkin_helpers import checkin, device_with_credential

pytestmark = pytest.mark.django_db
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def log_lines(settings):
    """The lines the configured root handler ("default" in LOGGING) writes during the test."""
    assert settings.LOG_FORMAT == "json"
    handler = next(h for h in logging.getLogger().handlers if h.name == "default")
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    handler.setStream(previous)


def request_line(lines: list[dict], path: str) -> dict:
    return next(line for line in lines if line["logger"] == "hotswap.request" and line["path"] == path)


def test_an_api_request_logs_a_json_line_with_its_ids_and_actor(client_for, log_lines):
    client = client_for("Viewer", username="vera")

    response = client.get("/api/v1/models", HTTP_X_REQUEST_ID="ci-run-12345678",
                          HTTP_TRACEPARENT=f"00-{TRACE_ID}-{PARENT_ID}-01")

    assert response.status_code == 200
    line = request_line(log_lines(), "/api/v1/models")
    assert line["level"] == "INFO"
    assert line["message"] == "GET /api/v1/models 200"
    assert line["request_id"] == "ci-run-12345678"
    assert line["trace_id"] == TRACE_ID
    assert len(line["span_id"]) == 16 and line["span_id"] != PARENT_ID
    assert line["actor"] == "vera"
    assert line["status"] == 200 and line["method"] == "GET" and line["duration_ms"] >= 0
    assert line["timestamp"].endswith("+00:00")


def test_a_request_line_names_the_client_a_trusted_proxy_forwarded_for(client_for, log_lines, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    client = client_for("Viewer")

    client.get("/api/v1/models", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.1, 203.0.113.5")
    client.get("/api/v1/devices", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="203.0.113.5")

    lines = log_lines()
    assert request_line(lines, "/api/v1/models")["client"] == "203.0.113.5"
    assert request_line(lines, "/api/v1/devices")["client"] == "198.51.100.7"


def test_without_a_traceparent_the_trace_id_is_the_request_id_the_error_body_shows(client_for, log_lines):
    response = client_for("Viewer").get("/api/v1/models/nope-1.0.0")

    assert response.status_code == 404
    trace_id = response.json()["error"]["trace_id"]
    line = request_line(log_lines(), "/api/v1/models/nope-1.0.0")
    assert line["request_id"] == trace_id == line["trace_id"]


def test_lines_logged_inside_a_device_check_in_name_the_device(client, log_lines):
    _device, credential = device_with_credential("cam-0042")

    response = checkin(client, credential, {"models": [{"model": "resnet"}]})  # invalid: a 400 is logged at INFO

    assert response.status_code == 400
    line = request_line(log_lines(), "/api/v1/devices/checkin")
    assert line["actor"] == "device:cam-0042"
    assert line["request_id"] == response["X-Request-ID"]


def test_answered_check_ins_and_probes_stay_below_info(client, log_lines):
    _device, credential = device_with_credential("cam-0043")
    assert checkin(client, credential, {"models": []}).status_code == 200
    assert client.get("/health").status_code == 200
    assert not [line for line in log_lines() if line["logger"] == "hotswap.request"]


def test_an_extra_field_of_the_caller_wins_over_the_context(client_for, log_lines):
    context = log_context.LogContext(request_id="r-1", trace_id=TRACE_ID, span_id=PARENT_ID, actor="vera")
    with log_context.bound(context):
        logging.getLogger("hotswap.test").warning("deprecated", extra={"actor": "admin", "model_id": "resnet-1.0.0"})
    line = next(line for line in log_lines() if line["message"] == "deprecated")
    assert line["actor"] == "admin" and line["model_id"] == "resnet-1.0.0" and line["request_id"] == "r-1"


@shared_task(name="tests.observability.log_something")
def log_something() -> None:
    logging.getLogger("hotswap.test").info("inside the task")


def test_celery_tasks_log_with_their_task_id(log_lines):
    result = log_something.apply()

    line = next(line for line in log_lines() if line["message"] == "inside the task")
    assert line["request_id"] == result.id
    assert line["task"] == "tests.observability.log_something"
    assert len(line["trace_id"]) == 32
    assert log_context.current() is None


def test_the_console_format_is_one_readable_line_with_the_context():
    record = logging.LogRecord("rollouts.services", logging.INFO, __file__, 1, "distribution created", None, None)
    record.distribution = 7
    record.data = {"id": "the message again, as Celery adds it"}
    context = log_context.LogContext(request_id="r-2", trace_id=TRACE_ID, span_id=PARENT_ID, actor="olga")
    with log_context.bound(context):
        ContextFilter().filter(record)

    line = ConsoleFormatter().format(record)

    assert " INFO rollouts.services distribution created " in line
    assert "distribution=7" in line and "request_id=r-2" in line and "actor=olga" in line
    assert f"trace_id={TRACE_ID}" in line
    assert "Celery" not in line


def test_exceptions_stay_inside_the_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    payload = json.loads(JsonFormatter().format(record))
    assert payload["message"] == "failed" and "ValueError: boom" in payload["exc_info"]


def test_an_active_opentelemetry_span_provides_the_ids():
    trace = pytest.importorskip("opentelemetry.trace")
    span_context = trace.SpanContext(trace_id=int(TRACE_ID, 16), span_id=int(PARENT_ID, 16), is_remote=False)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "traced", None, None)
    with trace.use_span(trace.NonRecordingSpan(span_context)):
        ContextFilter().filter(record)
    assert (record.trace_id, record.span_id) == (TRACE_ID, PARENT_ID)


@pytest.mark.parametrize(("traceparent", "request_id", "expected"), [
    (f"00-{TRACE_ID}-{PARENT_ID}-01", "whatever-1234", TRACE_ID),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "0af7651916cd43dd8448eb211c80319c",
     "0af7651916cd43dd8448eb211c80319c"),
    ("", "0AF76519-16CD-43DD-8448-EB211C80319C", "0af7651916cd43dd8448eb211c80319c"),
])
def test_trace_ids_come_from_the_traceparent_else_the_request_id(traceparent, request_id, expected):
    trace_id, span_id, _ = log_context.trace_ids(traceparent=traceparent, request_id=request_id)
    assert trace_id == expected and len(span_id) == 16


def test_a_request_id_that_is_not_hex_still_gives_a_stable_trace_id():
    first, _, _ = log_context.trace_ids(traceparent=None, request_id="ci-run-12345678")
    again, _, _ = log_context.trace_ids(traceparent=None, request_id="ci-run-12345678")
    assert first == again and len(first) == 32 and int(first, 16)


def test_a_signed_download_link_is_logged_without_its_token(client, log_lines):
    token = "eyJrZXkiOiJhcnRpZmFjdHMvcmVzbmV0LTEuMC4wIn0:1vQx7a:c2lnbmF0dXJlLW9mLXRoZS1saW5r"

    response = client.get(f"/api/v1/artifacts/{token}")

    assert response.status_code == 403  # not a valid link: logged at INFO, and by django.request as a warning
    lines = log_lines()
    assert request_line(lines, "/api/v1/artifacts/…")["status"] == 403
    assert token not in json.dumps(lines) and "c2lnbmF0dXJl" not in json.dumps(lines)


def routine_celery_lines(task_name: str) -> None:
    """What beat and a worker log about one run of `task_name`, through Celery's own logging calls."""
    from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
    from celery.app.trace import info as trace_info

    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "tick", task_name)
    logging.getLogger("celery.worker.strategy").info(LOG_RECEIVED, {"id": "t-1", "name": task_name})
    trace_info(LOG_SUCCESS, {"id": "t-1", "name": task_name, "return_value": 3, "runtime": 0.01, "args": (),
                             "kwargs": {}})


def test_periodic_task_runs_are_not_logged_at_info_but_their_failures_and_other_tasks_are(log_lines, settings):
    periodic = settings.CELERY_BEAT_SCHEDULE["mark-silent-devices-offline"]["task"]

    routine_celery_lines(periodic)
    assert log_lines() == []

    routine_celery_lines("models_app.tasks.model_version_validate")  # a person's upload: worth a line
    logging.getLogger("celery.app.trace").error("Task %(name)s[%(id)s] raised unexpected: %(exc)s",
                                                {"name": periodic, "id": "t-2", "exc": "DataError"})
    lines = log_lines()
    assert [line["logger"] for line in lines] == ["celery.worker.strategy", "celery.app.trace", "celery.app.trace"]
    assert "model_version_validate" in lines[1]["message"] and lines[1]["level"] == "INFO"
    assert lines[2]["level"] == "ERROR" and periodic in lines[2]["message"]


def test_the_console_line_of_a_request_does_not_repeat_what_its_message_says():
    record = logging.LogRecord("hotswap.request", logging.INFO, __file__, 1, "%s %s %s",
                               ("GET", "/api/v1/models", 401), None)
    record.method, record.path, record.status, record.duration_ms = "GET", "/api/v1/models", 401, 3.2
    record.attempt = 1  # a "1" inside the path is not the field

    line = ConsoleFormatter().format(record)

    assert line.endswith(" INFO hotswap.request GET /api/v1/models 401 duration_ms=3.2 attempt=1"), line
