"""Every API error, whatever raised it, has the shape {"error": {code, message, details, trace_id, timestamp}}."""

import pytest
from rest_framework.test import APIClient

from models_app import selectors

pytestmark = pytest.mark.django_db


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "details", "trace_id", "timestamp"}
    assert error["code"] == code
    assert error["message"]
    assert error["trace_id"] == response["X-Request-ID"]
    return error


def test_it_answers_unknown_api_paths_with_a_json_404(client_for):
    assert_error_shape(client_for("Viewer").get("/api/v1/no-such-thing"), 404, "NOT_FOUND")


def test_it_answers_a_wrong_method_with_a_json_405(client_for):
    assert_error_shape(client_for("Admin").put("/api/v1/models", {}), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(("method", "path", "allowed"), [("get", "/api/v1/devices/checkin", "POST"),
                                                         ("put", "/api/v1/devices/checkin", "POST"),
                                                         ("post", "/api/v1/devices/manifest-key", "GET")])
def test_the_plain_device_views_answer_a_wrong_method_with_a_json_405_naming_the_allowed_one(client, method, path,
                                                                                           allowed):
    response = getattr(client, method)(path)

    assert_error_shape(response, 405, "METHOD_NOT_ALLOWED")
    assert response["Allow"] == allowed


def test_it_answers_anonymous_calls_with_401(api_client):
    response = api_client.get("/api/v1/models")
    assert_error_shape(response, 401, "NOT_AUTHENTICATED")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_answers_unsupported_media_types_with_415(client_for):
    response = client_for("Admin").post("/api/v1/models", {"name": "x"}, format="json")
    assert_error_shape(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_it_hides_unhandled_errors_behind_a_json_500(client_for, monkeypatch):
    def explode(**kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(selectors, "model_version_list", explode)
    error = assert_error_shape(client_for("Viewer").get("/api/v1/models"), 500, "INTERNAL_ERROR")
    assert "fire" not in error["message"]


def test_it_answers_oversized_form_fields_with_413(client_for, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client_for("Admin").post(
        "/api/v1/models", {"name": "x", "description": "d" * 5000}, format="multipart"
    )
    assert_error_shape(response, 413, "PAYLOAD_TOO_LARGE")


def test_it_keeps_a_well_formed_request_id_from_the_caller(client_for):
    client: APIClient = client_for("Viewer")
    response = client.get("/api/v1/models/x-1.0.0", HTTP_X_REQUEST_ID="ci-run-12345678")
    assert response.json()["error"]["trace_id"] == "ci-run-12345678"
