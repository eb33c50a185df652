"""POST /api/v1/models: streamed uploads, checksums, duplicates, limits, formats, and nothing left behind."""

import io
import zipfile

import pytest

from models_app.models import AIModel, ModelVersion
from tests.artifacts import (
    onnx_model_bytes,
    tflite_bytes,
    zip_bomb_bytes,
    zip_package_bytes,
    zip_traversal_bytes,
)
from tests.models_app.conftest import sha256, upload

pytestmark = pytest.mark.django_db


def test_it_stores_an_onnx_model_and_answers_202_with_its_checksum(developer, onnx_bytes, s3, stored_keys):
    before = stored_keys()

    response = upload(developer, onnx_bytes, sha256=sha256(onnx_bytes), tags="vision,edge")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["model_id"] == "resnet-1.0.0"
    assert body["sha256"] == sha256(onnx_bytes)
    assert body["size_bytes"] == len(onnx_bytes)
    assert body["status"] == "uploaded"
    assert body["detected_format"] == "onnx"
    assert body["tags"] == ["vision", "edge"]
    assert "artifact_location" not in body  # the store's address (a server path on local disk) is not shown
    client, bucket = s3
    (new_key,) = stored_keys() - before
    assert client.get_object(Bucket=bucket, Key=new_key)["Body"].read() == onnx_bytes
    assert ModelVersion.objects.get().storage_key == new_key


def test_it_rejects_a_wrong_declared_checksum_and_leaves_nothing(developer, onnx_bytes, stored_keys):
    before = stored_keys()

    response = upload(developer, onnx_bytes, sha256="0" * 64)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "CHECKSUM_MISMATCH"
    assert error["received_sha256"] == sha256(onnx_bytes)
    assert error["details"] == [{"field": "sha256", "message": "Does not match the uploaded bytes."}]
    assert not ModelVersion.objects.exists() and not AIModel.objects.exists()
    assert stored_keys() == before


def test_it_aborts_the_multipart_upload_when_a_large_artifact_fails_its_checksum(developer, settings, stored_keys):
    settings.ARTIFACT_PART_BYTES = 5 * 1024 * 1024
    big = onnx_model_bytes(big_initializer_bytes=12 * 1024 * 1024)
    before = stored_keys()

    response = upload(developer, big, sha256="f" * 64)

    assert response.status_code == 400
    assert stored_keys() == before  # no object and no dangling multipart upload


def test_it_streams_a_multi_part_artifact_intact(developer, settings, s3):
    settings.ARTIFACT_PART_BYTES = 5 * 1024 * 1024
    big = onnx_model_bytes(big_initializer_bytes=12 * 1024 * 1024)

    response = upload(developer, big, sha256=sha256(big))

    assert response.status_code == 202, response.json()
    client, bucket = s3
    key = ModelVersion.objects.get().storage_key
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(big)
    assert sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()) == sha256(big)


def test_it_rejects_an_empty_artifact(developer, stored_keys):
    before = stored_keys()

    response = upload(developer, b"")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "EMPTY_ARTIFACT"
    assert not ModelVersion.objects.exists()
    assert stored_keys() == before


def test_it_returns_the_existing_version_for_an_identical_retry(developer, onnx_bytes, stored_keys):
    first = upload(developer, onnx_bytes)
    after_first = stored_keys()

    retry = upload(developer, onnx_bytes)

    assert retry.status_code == 200
    assert retry.json()["model_id"] == first.json()["model_id"]
    assert ModelVersion.objects.count() == 1
    assert stored_keys() == after_first


def test_it_refuses_the_same_version_with_different_bytes(developer, onnx_bytes, stored_keys):
    upload(developer, onnx_bytes)
    after_first = stored_keys()

    response = upload(developer, onnx_model_bytes(hidden=16))

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "VERSION_EXISTS"
    assert error["existing_sha256"] == sha256(onnx_bytes)
    assert ModelVersion.objects.count() == 1
    assert stored_keys() == after_first


def test_it_answers_413_over_the_size_limit_and_leaves_nothing(developer, settings, onnx_bytes, stored_keys):
    settings.ARTIFACT_MAX_BYTES = len(onnx_bytes) - 1
    before = stored_keys()

    response = upload(developer, onnx_bytes)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert not ModelVersion.objects.exists()
    assert stored_keys() == before


def test_it_refuses_a_declared_content_length_over_the_limit_before_reading(developer, settings):
    settings.ARTIFACT_MAX_BYTES = 1000

    response = developer.post("/api/v1/models", data=b"x" * 10, content_type="multipart/form-data; boundary=b",
                              CONTENT_LENGTH=str(50 * 1024 * 1024))

    assert response.status_code == 413


def test_it_rejects_content_that_contradicts_the_framework(developer, onnx_bytes, stored_keys):
    before = stored_keys()

    response = upload(developer, onnx_bytes, framework="tflite", filename="model.tflite")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "FRAMEWORK_MISMATCH"
    assert "onnx" in error["message"]
    assert stored_keys() == before


def test_it_detects_format_from_content_not_the_file_name(developer):
    response = upload(developer, tflite_bytes(), framework="tflite", filename="model.onnx")

    assert response.status_code == 202, response.json()
    assert response.json()["detected_format"] == "tflite"


@pytest.mark.parametrize("content", [b"not a model at all", b"<html><body>oops</body></html>"])
def test_it_rejects_content_that_is_no_model(developer, content, stored_keys):
    before = stored_keys()

    response = upload(developer, content)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_ARTIFACT"
    assert stored_keys() == before


def test_it_rejects_a_truncated_onnx_model(developer, onnx_bytes):
    response = upload(developer, onnx_bytes[: len(onnx_bytes) // 2])

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_ARTIFACT"


def test_it_accepts_a_zip_package_whose_manifest_names_an_onnx_model(developer, onnx_bytes):
    response = upload(developer, zip_package_bytes(onnx_bytes), filename="package.zip")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["detected_format"] == "zip_package"
    assert body["format_details"]["model_file"] == "model.onnx"


@pytest.mark.parametrize("archive", [zip_bomb_bytes, zip_traversal_bytes], ids=["zip-bomb", "path-traversal"])
def test_it_rejects_unsafe_zip_packages(developer, archive, stored_keys):
    before = stored_keys()

    response = upload(developer, archive(), filename="package.zip")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_ARTIFACT"
    assert not ModelVersion.objects.exists()
    assert stored_keys() == before


def test_it_rejects_a_zip_without_a_manifest(developer, onnx_bytes):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", onnx_bytes)

    response = upload(developer, buffer.getvalue(), filename="package.zip")

    assert response.status_code == 400
    assert "manifest.json" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"version": "1.0"}, "version"),
        ({"version": "v1.0.0"}, "version"),
        ({"name": "Bad Name!"}, "name"),
        ({"framework": "caffe"}, "framework"),
        ({"sha256": "xyz"}, "sha256"),
        ({"sha256": None}, "sha256"),  # required: the README promises a checked checksum
        ({"sha256": ""}, "sha256"),
        ({"min_memory_mb": "-5"}, "min_memory_mb"),
        ({"input_schema": '[{"name": "x", "dtype": "float32", "shape": [0]}]'}, "input_schema"),
        ({"input_schema": "not json"}, "input_schema"),
    ],
)
def test_it_validates_every_field_with_a_clear_error(developer, onnx_bytes, stored_keys, fields, field):
    before = stored_keys()

    response = upload(developer, onnx_bytes, **fields)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == [field]
    assert error["details"][0]["message"]
    assert stored_keys() == before


def test_it_requires_the_artifact(developer):
    response = developer.post("/api/v1/models", {"name": "a", "version": "1.0.0", "framework": "onnx",
                                                 "sha256": "0" * 64}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == [{"field": "artifact", "message": "This field is required."}]


def test_it_keeps_declared_schema_and_device_requirements(developer, onnx_bytes):
    schema = '[{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]'

    response = upload(developer, onnx_bytes, input_schema=schema, target_device_type="edge-camera",
                      min_memory_mb="512", accelerator="gpu", task="classification")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["input_schema"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]
    assert body["device_requirements"] == {"target_device_type": "edge-camera", "min_memory_mb": 512,
                                           "accelerator": "gpu"}
    assert body["task"] == "classification"


def test_it_refuses_a_new_version_that_changes_the_framework(developer, onnx_bytes):
    upload(developer, onnx_bytes)

    response = upload(developer, tflite_bytes(), version="2.0.0", framework="tflite")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "FRAMEWORK_MISMATCH"


def test_it_rate_limits_uploads_per_user(developer, settings, onnx_bytes):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "upload": "2/hour"}

    statuses = [upload(developer, onnx_bytes, version=f"1.0.{i}").status_code for i in range(3)]

    assert statuses[:2] == [202, 202]
    assert statuses[2] == 429
    response = upload(developer, onnx_bytes, version="1.0.9")
    assert response.json()["error"]["code"] == "RATE_LIMITED"
    assert int(response["Retry-After"]) > 0
