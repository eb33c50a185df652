"""gunicorn's own log lines follow LOG_FORMAT: JSON objects like the app's, or gunicorn's readable text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests import live
from tests.devices.checkin_helpers import device_with_credential

USER_AGENT = "hotswap-ci/2.1"


def runstack_gunicorn(tmp_path: Path, log_format: str):
    return live.runstack_gunicorn(tmp_path, env={"LOG_FORMAT": log_format}, name=log_format)


def lines_of(*paths: Path) -> list[str]:
    return [line for path in paths for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.django_db(transaction=True)
def test_with_log_format_json_every_line_gunicorn_writes_is_a_json_object(tmp_path):
    _device, credential = device_with_credential("cam-logs-1")
    with runstack_gunicorn(tmp_path, "json") as (base, out, err), requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        denied = session.get(f"{base}/api/v1/models?name=resnet", timeout=10)
        assert denied.status_code == 401
        answered = session.post(f"{base}/api/v1/devices/checkin", json={"running": None}, timeout=10,
                                headers={"Authorization": f"Device {credential}"})
        assert answered.status_code == 200, answered.text

    lines = lines_of(out, err)
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all(isinstance(record, dict) for record in records)
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record), record
        assert record["timestamp"].endswith("+00:00")

    errors = [record for record in records if record["logger"] == "gunicorn.error"]
    messages = " | ".join(record["message"] for record in errors)
    assert "Listening at: http://127.0.0.1:" in messages and "Booting worker with pid" in messages
    assert "Shutting down: Master" in messages
    assert {record["level"] for record in errors} == {"INFO"}

    access = [record for record in records if record["logger"] == "gunicorn.access"]
    # The answered check-in is left out, as runstack's access log does in every format.
    assert [record["path"] for record in access if record["path"] != "/health"] == ["/api/v1/models"]
    line = next(record for record in access if record["path"] == "/api/v1/models")
    assert line["message"] == "GET /api/v1/models 401" and line["level"] == "INFO"
    assert (line["method"], line["status"], line["query"]) == ("GET", 401, "name=resnet")
    assert line["remote_addr"] == "127.0.0.1" and line["user_agent"] == USER_AGENT
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["request_id"] == denied.headers["X-Request-ID"]
    # The app's own line of the same request carries the same request id.
    app = next(record for record in records if record["logger"] == "hotswap.request"
               and record["path"] == "/api/v1/models")
    assert app["request_id"] == line["request_id"] and app["status"] == 401


@pytest.mark.django_db(transaction=True)
def test_with_log_format_console_gunicorn_keeps_its_readable_lines(tmp_path):
    with runstack_gunicorn(tmp_path, "console") as (base, out, err):
        assert requests.get(f"{base}/api/v1/models", headers={"User-Agent": USER_AGENT}, timeout=10).status_code == 401

    access = lines_of(out)
    assert any('"GET /api/v1/models HTTP/1.1" 401' in line and USER_AGENT in line for line in access), access
    errors = lines_of(err)
    assert any("[INFO] Listening at: http://127.0.0.1:" in line for line in errors), errors
    for line in access + [line for line in errors if "[INFO]" in line]:
        assert not line.startswith("{"), line
