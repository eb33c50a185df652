"""hotswap.wsgi's application: check-ins take the short DeviceHandler road, every other request the full stack."""

from __future__ import annotations

import io
import json
import sys

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from prometheus_client import REGISTRY

from hotswap.handlers import HotSwapApplication
from tests.devices.checkin_helpers import device_with_credential, metric_window, registry_version, slot_set

pytestmark = pytest.mark.django_db

CHECKIN = "/api/v1/devices/checkin"
IDLE = b'{"protocol": 2, "models": []}'


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes):
        self.status_code = int(status.split()[0])
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def json(self):
        return json.loads(self.body)


@pytest.fixture(scope="module")
def application():
    return HotSwapApplication(WSGIHandler())


def call(application, method: str, path: str, body: bytes = b"", *, environ_extra: dict | None = None,
         **headers: str) -> Answer:
    """One request through the WSGI application, as gunicorn would make it (environ_extra: None values remove)."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
        **{"HTTP_" + name.upper(): value for name, value in headers.items()},
    }
    for name, value in (environ_extra or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    started = []
    # As Django's test client does: the test's transaction must outlive the request's connection recycling.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        result = application(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
        try:
            body = b"".join(result)
        finally:
            result.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return Answer(*started[0], body)


def checked_in_count(status: int) -> float:
    return REGISTRY.get_sample_value("hotswap_device_checkins_total", {"status": str(status)}) or 0.0


def test_a_device_gets_its_signed_desired_state_then_a_304_through_the_application(application):
    device, credential = device_with_credential()
    version, _content = registry_version()
    slot_set(device, version)

    first = call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}")

    assert first.status_code == 200
    [desired] = first.json()["desired"]
    manifest = desired["manifest"]
    assert (manifest["device_id"], manifest["model"], manifest["version"]) == ("cam-1", "resnet", "1.0.0")
    assert first.headers["traceparent"].startswith("00-") and first.headers["x-request-id"]
    again = call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}",
                 if_none_match=first.headers["etag"])
    assert again.status_code == 304 and again.body == b""


def test_check_ins_skip_the_consoles_middleware_that_other_requests_get(application):
    _device, credential = device_with_credential()

    checkin = call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}")
    health = call(application, "GET", "/health")

    assert checkin.status_code == 200 and health.status_code == 200
    # Sessions, CSRF, clickjacking and security headers belong to the console, not to device calls.
    assert "x-frame-options" not in checkin.headers and "vary" not in checkin.headers
    assert "set-cookie" not in checkin.headers
    assert health.headers["x-frame-options"] == "DENY"
    assert "x-request-id" in checkin.headers and "x-request-id" in health.headers


def test_refusals_on_the_short_road_keep_the_api_error_format_and_store_nothing(application):
    device, credential = device_with_credential()

    unknown = call(application, "POST", CHECKIN, b"{}", authorization="Device hsd_00000000_nope")
    malformed = call(application, "POST", CHECKIN, b'{"metrics": [', authorization=f"Device {credential}")
    negative = call(application, "POST", CHECKIN, json.dumps({"protocol": 2, "models": [],
                                                              "metrics": [metric_window(count=-1)]}).encode(),
                    authorization=f"Device {credential}")

    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "DEVICE_CREDENTIAL_INVALID"
    assert unknown.headers["www-authenticate"] == "Device"
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "MALFORMED_REQUEST"
    assert negative.status_code == 400 and "metrics[0].inference_count" in json.dumps(negative.json())
    assert malformed.json()["error"]["trace_id"] == malformed.headers["x-request-id"]
    assert device.metric_windows.count() == 0


def test_check_ins_are_counted_by_status_for_prometheus(application):
    _device, credential = device_with_credential()
    before_200, before_304, before_401 = checked_in_count(200), checked_in_count(304), checked_in_count(401)

    etag = call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}").headers["etag"]
    call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}", if_none_match=etag)
    call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}", if_none_match=etag)
    call(application, "POST", CHECKIN, b"{}", authorization="Device hsd_00000000_nope")

    assert checked_in_count(200) - before_200 == 1
    assert checked_in_count(304) - before_304 == 2
    assert checked_in_count(401) - before_401 == 1


def test_the_identity_read_is_a_prepared_statement_planned_once_per_connection(application, settings):
    settings.CHECKIN_PREPARED_STATEMENTS = True
    _first, first_credential = device_with_credential("cam-1")
    _second, second_credential = device_with_credential("cam-2")

    for credential in (first_credential, second_credential, first_credential):
        assert call(application, "POST", CHECKIN, IDLE, authorization=f"Device {credential}").status_code == 200

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements "
                       "WHERE statement LIKE '%%FROM devices_devicecredential c%%'")
        assert cursor.fetchone()[0] == 1


def test_the_gunicorn_entry_point_is_the_dispatching_application():
    from hotswap import wsgi

    assert isinstance(wsgi.application, HotSwapApplication)
    assert wsgi.application.device_paths == {CHECKIN}


# What gunicorn hands the application for a body sent with Transfer-Encoding: chunked: no Content-Length,
# the de-chunked bytes as wsgi.input and wsgi.input_terminated to say that reading them ends.
CHUNKED = {"CONTENT_LENGTH": None, "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}


def test_a_chunked_check_in_is_read_to_its_end_and_its_reports_stored(application):
    registry_version()
    device, credential = device_with_credential()
    body = json.dumps({"protocol": 2, "models": [{"model": "resnet", "version": "1.0.0", "sha256": ""}],
                       "installs": [{"model": "resnet", "version": "1.0.0", "status": "active"}],
                       "metrics": [metric_window()]}).encode()

    answer = call(application, "POST", CHECKIN, body, environ_extra=CHUNKED, authorization=f"Device {credential}")

    assert answer.status_code == 200, answer.body
    assert answer.json()["accepted"] == {"installs": 1, "metrics": 1}
    assert device.install_reports.get().status == "active"


def test_a_chunked_check_in_above_the_cap_is_refused_with_413(application, settings):
    settings.CHECKIN_MAX_BODY_BYTES = 100
    device, credential = device_with_credential()
    body = json.dumps({"installs": [{"model": "resnet", "version": "1.0.0", "status": "active"}] * 5}).encode()

    answer = call(application, "POST", CHECKIN, body, environ_extra=CHUNKED, authorization=f"Device {credential}")

    assert answer.status_code == 413 and answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert not device.install_reports.exists()


def test_a_chunked_check_in_a_server_cannot_read_to_its_end_is_answered_411(application):
    _device, credential = device_with_credential()

    answer = call(application, "POST", CHECKIN, b"{}", environ_extra={**CHUNKED, "wsgi.input_terminated": None},
                  authorization=f"Device {credential}")

    assert answer.status_code == 411 and answer.json()["error"]["code"] == "LENGTH_REQUIRED"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_check_in_with_another_method_is_a_405_in_the_error_format_naming_post(application, method):
    _device, credential = device_with_credential()

    answer = call(application, method, CHECKIN, authorization=f"Device {credential}")

    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert answer.json()["error"]["trace_id"] == answer.headers["x-request-id"]
    assert answer.headers["allow"] == "POST"
