"""/health (the process answers) and /ready (database, Redis, broker and storage answer), on real servers."""

from __future__ import annotations

import socket
import time

import pytest
from django.test import Client

from hotswap.lib.localservices import free_port

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    return free_port()


def assert_not_ready(response, *down: str) -> dict:
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "NOT_READY"
    assert set(error) >= {"code", "message", "details", "trace_id", "timestamp"}
    for name in down:
        assert name in error["message"]
        assert not error["checks"][name]["ok"]
    assert {d["field"] for d in error["details"]} == set(down)
    return error


def test_health_answers_while_the_process_lives():
    response = Client().get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_checks_database_redis_broker_and_s3_storage():
    response = Client().get("/ready")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "redis", "broker", "storage"}
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())


def test_ready_names_the_storage_when_s3_does_not_answer(settings):
    artifacts = settings.STORAGES["artifacts"]
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        **artifacts, "OPTIONS": {**artifacts["OPTIONS"], "endpoint_url": f"http://127.0.0.1:{closed_port()}"}}}

    error = assert_not_ready(Client().get("/ready"), "storage")

    assert error["checks"]["database"]["ok"] and error["checks"]["redis"]["ok"]
    assert "Could not connect" in error["checks"]["storage"]["error"]


def test_ready_names_the_storage_when_the_bucket_is_missing(settings):
    settings.S3_BUCKET = "no-such-bucket-here"
    assert_not_ready(Client().get("/ready"), "storage")


def test_ready_names_redis_when_the_cache_server_is_down(settings):
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{closed_port()}/0"}}

    error = assert_not_ready(Client().get("/ready"), "redis")

    assert error["checks"]["broker"]["ok"]
    assert "ConnectionError" in error["checks"]["redis"]["error"]


def test_ready_names_the_broker_and_hides_its_password(settings):
    settings.CELERY_BROKER_URL = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"

    response = Client().get("/ready")

    assert_not_ready(response, "broker")
    assert b"hunter2" not in response.content


def test_ready_names_the_database_when_postgres_is_down(settings):
    from django.db import connections

    default = connections["default"]
    port = closed_port()
    original = default.settings_dict["PORT"]
    default.settings_dict["PORT"] = port
    try:
        error = assert_not_ready(Client().get("/ready"), "database")
    finally:
        default.settings_dict["PORT"] = original
    assert str(port) in error["checks"]["database"]["error"]


def test_ready_fails_fast_when_redis_hangs(settings):
    settings.READY_TIMEOUT_SECONDS = 0.5
    # A socket that accepts connections (the kernel's backlog) but never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    settings.CACHES = {"default": {**settings.CACHES["default"],
                                   "LOCATION": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"}}
    try:
        started = time.monotonic()
        assert_not_ready(Client().get("/ready"), "redis")
        assert time.monotonic() - started < 2
    finally:
        silent.close()


def test_ready_checks_a_local_artifact_directory(settings, tmp_path):
    settings.S3_BUCKET = ""
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    assert Client().get("/ready").status_code == 200
    assert list(tmp_path.iterdir()) == []

    settings.STORAGES["artifacts"]["OPTIONS"]["location"] = str(tmp_path / "not-yet")  # made as an upload would
    assert Client().get("/ready").status_code == 200

    (tmp_path / "a-file").write_text("")
    settings.STORAGES["artifacts"]["OPTIONS"]["location"] = str(tmp_path / "a-file" / "artifacts")
    error = assert_not_ready(Client().get("/ready"), "storage")
    assert "a-file" in error["checks"]["storage"]["error"]
