"""Hostile input is refused at the edge with a 400 naming the field: NUL, lone surrogates, deep nesting, huge forms."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from devices.models import Device, EnrollmentKey
from devices.services.enrollment import enrollment_key_create
from hotswap.lib.untrusted import MAX_JSON_DEPTH, InputRejected, json_parse, too_deep
from models_app.models import AIModel, ModelVersion
from tests.artifacts import onnx_model_bytes
from tests.models_app.conftest import upload

pytestmark = pytest.mark.django_db

NUL, SURROGATE = "a\x00b", "\udc80x"


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return onnx_model_bytes()


def post_json(client: APIClient, path: str, body) -> object:
    # json.dumps writes both as \u escapes, as any client would send them.
    return client.post(path, json.dumps(body), content_type="application/json")


def assert_refused(response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["trace_id"]
    if field is not None:
        assert field in [d["field"] for d in error["details"]], error["details"]
    return error


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("text", [NUL, SURROGATE])
def test_it_refuses_a_token_request_whose_username_cannot_be_stored(text):
    response = post_json(APIClient(), "/api/v1/auth/token", {"username": text, "password": "whatever-it-is"})

    assert_refused(response, 400, "VALIDATION_ERROR", "username")


@pytest.mark.parametrize("text", [NUL, SURROGATE])
def test_it_refuses_an_enrollment_naming_the_field_and_enrolls_nothing(text):
    _key, raw = enrollment_key_create(name="fleet", created_by=None)
    body = {"enrollment_key": raw, "device_id": "cam-1", "name": "Lobby", "device_type": "edge-camera",
            "region": "eu-west", "tags": ["ok", text], "capabilities": {"gpu": text}}

    error = assert_refused(post_json(APIClient(), "/api/v1/devices/enroll", body), 400, "VALIDATION_ERROR")

    assert {d["field"] for d in error["details"]} == {"tags[1]", "capabilities.gpu"}
    assert not Device.objects.exists() and EnrollmentKey.objects.get().uses == 0


def test_it_refuses_an_unstorable_field_name_spelled_out_in_the_details(client_for):
    response = post_json(client_for("Admin"), "/api/v1/enrollment-keys", {"name": "fleet", "x\x00y": 1})

    assert_refused(response, 400, "VALIDATION_ERROR", "x\\u0000y")
    assert not EnrollmentKey.objects.exists()


@pytest.mark.parametrize("path", ["/api/v1/devices?region=a%00b", "/api/v1/models?name=a%00b",
                                  "/api/v1/devices?search=%00"])
def test_it_refuses_a_query_parameter_that_cannot_be_stored(client_for, path):
    field = path.split("?")[1].split("=")[0]

    assert_refused(client_for("Viewer").get(path), 400, "VALIDATION_ERROR", field)


@pytest.mark.parametrize("path", ["/api/v1/devices/a%00b", "/api/v1/models/a%00b-1.0.0",
                                  "/api/v1/models/a%00b/test-sets"])
def test_a_nul_in_a_url_names_no_resource(client_for, path):
    error = assert_refused(client_for("Admin").get(path), 404, "NOT_FOUND")

    assert "a\\u0000b" in error["message"]


def test_the_console_search_refuses_nul_with_a_400_page(client, make_user):
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))

    response = client.get("/admin/devices/device/?q=%00")

    assert response.status_code == 400


def test_the_console_forms_refuse_nul_as_a_form_error(client, make_user):
    # Django's CharField rejects NUL itself; this proves the console's forms keep it so.
    response = client.post("/admin/login/", {"username": NUL, "password": "x"})
    assert response.status_code == 200 and "Null characters are not allowed" in response.content.decode()

    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    device = Device.objects.create(device_id="cam-1", name="Lobby")
    response = client.post(f"/admin/devices/device/{device.pk}/change/", {"name": NUL, "device_id": "cam-1"})
    assert response.status_code == 200
    device.refresh_from_db()
    assert device.name == "Lobby"


@pytest.mark.parametrize("gates", ['{"min_accuracy": "\\u0000"}', '{"min_accuracy": NaN}', nested(100_000)],
                         ids=["nul", "nan", "deep"])
def test_the_console_s_json_fields_refuse_what_the_database_cannot_take_as_a_form_error(client, make_user, gates):
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    model = AIModel.objects.create(name="resnet", framework="onnx", quality_gates={"min_accuracy": 0.9})

    response = client.post(f"/admin/models_app/aimodel/{model.pk}/change/", {
        "description": "", "task": "classification", "tags": "", "accuracy_metric": "top1", "quality_gates": gates,
        "versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0", "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "1000"})

    assert response.status_code == 200
    assert "Enter a valid JSON" in response.content.decode()
    model.refresh_from_db()
    assert model.quality_gates == {"min_accuracy": 0.9}


def test_it_refuses_a_multipart_upload_with_a_nul_field_and_stores_nothing(client_for, onnx_bytes):
    response = upload(client_for("ModelDeveloper"), onnx_bytes, description=NUL)

    assert_refused(response, 400, "VALIDATION_ERROR", "description")
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_it_refuses_json_nested_deeper_than_the_cap(client_for, depth):
    response = client_for("Admin").post("/api/v1/enrollment-keys", '{"name": ' + nested(depth) + "}",
                                        content_type="application/json")

    assert_refused(response, 400, "MALFORMED_REQUEST")
    assert not EnrollmentKey.objects.exists()


def test_json_nested_up_to_the_cap_is_parsed_and_judged_on_its_content(client_for):
    response = client_for("Admin").post("/api/v1/enrollment-keys", '{"name": ' + nested(MAX_JSON_DEPTH - 1) + "}",
                                        content_type="application/json")

    assert_refused(response, 400, "VALIDATION_ERROR", "name")  # not a string, but parsed


@pytest.mark.parametrize("schema", [nested(100_000), '[{"name": "x", "shape": ["\\u0000"], "dtype": "float32"}]'],
                         ids=["deep", "nul"])
def test_it_refuses_an_input_schema_nested_too_deep_or_unstorable_in_an_upload(client_for, onnx_bytes, schema):
    response = upload(client_for("ModelDeveloper"), onnx_bytes, input_schema=schema)

    assert_refused(response, 400, "VALIDATION_ERROR", "input_schema")
    assert not ModelVersion.objects.exists()


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@pytest.mark.parametrize("value", [
    ["a\\", [[["b"]]]],  # a string ending in an escaped backslash, then real nesting
    ['\\"[[[[', {"k]]": ["\\\\"]}],  # escaped quotes and brackets inside strings
    [["]" * 10, ["{" * 10]]],
    {"a": [{"b": [{"c": []}]}], "d": "\u00e9\ud83d\ude00"},
])
@pytest.mark.parametrize("cap", [1, 2, 3, 4, 5])
def test_the_depth_check_agrees_with_the_parsed_json_whatever_the_strings_hold(value, cap):
    body = json.dumps(value).encode()

    assert too_deep(body, max_depth=cap) == (depth(value) > cap), body


def test_an_upload_with_too_many_form_fields_is_a_400_in_the_error_format(client_for, onnx_bytes, settings):
    data = {f"field{i}": "x" for i in range(1_100)}
    data["artifact"] = SimpleUploadedFile("model.onnx", onnx_bytes)

    response = client_for("ModelDeveloper").post("/api/v1/models", data, format="multipart")

    error = assert_refused(response, 400, "MALFORMED_REQUEST")
    assert "DATA_UPLOAD_MAX_NUMBER_FIELDS" in error["message"]
    assert not ModelVersion.objects.exists()


def test_an_upload_with_too_many_files_is_a_400_in_the_error_format(client_for, onnx_bytes, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    data = {"name": "resnet", "version": "1.0.0", "framework": "onnx",
            **{f"file{i}": SimpleUploadedFile(f"m{i}.onnx", onnx_bytes) for i in range(4)}}

    response = client_for("ModelDeveloper").post("/api/v1/models", data, format="multipart")

    assert_refused(response, 400, "MALFORMED_REQUEST")
    assert not ModelVersion.objects.exists()


def test_a_user_can_still_log_in_with_a_non_ascii_name(make_user):
    make_user("Viewer", username="zoë-😀")

    response = post_json(APIClient(), "/api/v1/auth/token", {"username": "zoë-😀", "password": "s3cret-Passw0rd"})

    assert response.status_code == 200, response.content
    assert get_user_model().objects.filter(username="zoë-😀").exists()


def _parsed(body: bytes, **options):
    try:
        return json_parse(body, allow_nan=True, **options)
    except InputRejected as exc:
        return exc.code, exc.message, exc.details


@pytest.mark.parametrize("body", [
    b'{"a": [1, 2.5, "x", null, true]}', b'{"a": NaN, "b": -Infinity}', b'{"a": 1e400}', b'{"a": "\\ud800"}',
    b'{"a": "b\\u0000c", "\\u0000": 1}', b'{"a": "\xed\xa0\x80"}', b'\xef\xbb\xbf{}', b'{"a": 1,}', b'{"a": 1, "a": 2}',
    b'[' * (MAX_JSON_DEPTH + 1) + b']' * (MAX_JSON_DEPTH + 1), b'{"a": "\\ud83d\\ude00"}', b'"\xff"',
])
def test_the_fast_parse_of_bounded_bodies_reads_and_refuses_exactly_as_the_standard_one(body):
    assert _parsed(body, bounded_integers=True) == _parsed(body)


def test_the_fast_parse_reads_integers_beyond_64_bits_as_floats_which_bounded_callers_refuse_anyway():
    assert _parsed(b'{"n": 18446744073709551616}', bounded_integers=True) == {"n": 1.8446744073709552e19}
    assert _parsed(b'{"n": 18446744073709551615}', bounded_integers=True) == {"n": 18446744073709551615}
