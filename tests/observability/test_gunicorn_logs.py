"""gunicorn's own log lines follow LOG_FORMAT: JSON objects like the app's, or gunicorn's readable text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests import live
from tests.devices.checkin_helpers import device_with_credential

USER_AGENT = "hotswap-ci/2.1"


# An operator may add gunicorn's access log to runstack's command line; runstack itself does not.
ACCESS_LOG = ("--access-logfile", "-")
SIGNED_LINK = "/api/v1/artifacts/eyJrZXkiOiJtIn0:1vQx7a:c2lnbmF0dXJlLW9mLXRoZS1saW5r"


def runstack_gunicorn(tmp_path: Path, log_format: str, extra_args: tuple[str, ...] = ()):
    return live.runstack_gunicorn(tmp_path, env={"LOG_FORMAT": log_format}, name=log_format, extra_args=extra_args)


def lines_of(*paths: Path) -> list[str]:
    return [line for path in paths for line in path.read_text().splitlines() if line.strip()]


def json_records(*paths: Path) -> list[dict]:
    records = []
    for line in lines_of(*paths):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in records:
        assert isinstance(record, dict) and {"timestamp", "level", "logger", "message"} <= set(record), record
        assert record["timestamp"].endswith("+00:00")
    return records


@pytest.mark.django_db(transaction=True)
def test_with_log_format_json_every_line_is_a_json_object_and_each_request_one_line(tmp_path):
    _device, credential = device_with_credential("cam-logs-1")
    with runstack_gunicorn(tmp_path, "json") as (base, out, err), requests.Session() as session:
        denied = session.get(f"{base}/api/v1/models?name=resnet", timeout=10)
        assert denied.status_code == 401
        answered = session.post(f"{base}/api/v1/devices/checkin", json={"protocol": 2, "models": []}, timeout=10,
                                headers={"Authorization": f"Device {credential}"})
        assert answered.status_code == 200, answered.text

    records = json_records(out, err)
    errors = [record for record in records if record["logger"] == "gunicorn.error"]
    messages = " | ".join(record["message"] for record in errors)
    assert "Listening at: http://127.0.0.1:" in messages and "Booting worker with pid" in messages
    assert "Shutting down: Master" in messages
    assert {record["level"] for record in errors} == {"INFO"}

    # One line per request, the app's, with its request id; the answered check-in and probes only at DEBUG.
    requests_logged = [record for record in records if record["logger"] in ("hotswap.request", "gunicorn.access")]
    assert [(r["logger"], r["message"]) for r in requests_logged] == [("hotswap.request", "GET /api/v1/models 401")]
    assert requests_logged[0]["request_id"] == denied.headers["X-Request-ID"]


@pytest.mark.django_db(transaction=True)
def test_an_added_access_log_has_the_request_fields_and_no_link_signature(tmp_path):
    with runstack_gunicorn(tmp_path, "json", ACCESS_LOG) as (base, out, err), requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        denied = session.get(f"{base}/api/v1/models?name=resnet", timeout=10)
        assert session.get(f"{base}{SIGNED_LINK}", timeout=10).status_code == 403

    access = [record for record in json_records(out, err) if record["logger"] == "gunicorn.access"]
    line = next(record for record in access if record["path"] == "/api/v1/models")
    assert line["message"] == "GET /api/v1/models 401" and line["level"] == "INFO"
    assert (line["method"], line["status"], line["query"]) == ("GET", 401, "name=resnet")
    assert line["remote_addr"] == "127.0.0.1" and line["user_agent"] == USER_AGENT
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["request_id"] == denied.headers["X-Request-ID"]
    link = next(record for record in access if record["path"].startswith("/api/v1/artifacts/"))
    assert link["path"] == "/api/v1/artifacts/…" and link["message"] == "GET /api/v1/artifacts/… 403"
    assert "c2lnbmF0dXJl" not in (out.read_text() + err.read_text())


@pytest.mark.django_db(transaction=True)
def test_with_log_format_console_each_request_is_one_readable_line(tmp_path):
    with runstack_gunicorn(tmp_path, "console") as (base, out, err):
        denied = requests.get(f"{base}/api/v1/models", headers={"User-Agent": USER_AGENT}, timeout=10)
        assert denied.status_code == 401

    lines = lines_of(out, err)
    [request] = [line for line in lines if " hotswap.request " in line]
    assert " INFO hotswap.request GET /api/v1/models 401 duration_ms=" in request, request
    assert f"request_id={denied.headers['X-Request-ID']}" in request and "path=" not in request
    assert not [line for line in lines if '"GET /api/v1/models HTTP/1.1"' in line], lines  # no second, Apache line
    assert any("[INFO] Listening at: http://127.0.0.1:" in line for line in lines), lines
    assert not [line for line in lines if line.startswith("{")], lines


@pytest.mark.django_db(transaction=True)
def test_an_added_console_access_log_keeps_gunicorns_format_without_the_link_signature(tmp_path):
    with runstack_gunicorn(tmp_path, "console", ACCESS_LOG) as (base, out, err):
        assert requests.get(f"{base}{SIGNED_LINK}", headers={"User-Agent": USER_AGENT}, timeout=10).status_code == 403

    access = lines_of(out)
    assert any('"GET /api/v1/artifacts/… HTTP/1.1" 403' in line and USER_AGENT in line for line in access), access
    assert "c2lnbmF0dXJl" not in (out.read_text() + err.read_text())
