"""Listing, filtering, history, detail, deprecate, delete and download of model versions."""

import pytest
import requests
from botocore.exceptions import EndpointConnectionError

from models_app import services
from models_app.models import ModelVersion
from tests.artifacts import onnx_model_bytes, tflite_bytes
from tests.models_app.conftest import sha256, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(developer):
    """resnet 1.0.0, 1.2.0-rc.1, 1.2.0, 1.10.0 (onnx, tagged vision) and a tflite detector."""
    for i, version in enumerate(["1.0.0", "1.2.0-rc.1", "1.10.0", "1.2.0"]):
        response = upload(developer, onnx_model_bytes(hidden=4 + i), version=version, tags="vision")
        assert response.status_code == 202, response.json()
    assert upload(developer, tflite_bytes(), name="detector", framework="tflite").status_code == 202
    return developer


def test_it_lists_with_filters_and_pagination(catalog):
    everything = catalog.get("/api/v1/models").json()
    assert everything["count"] == 5

    assert catalog.get("/api/v1/models?framework=tflite").json()["results"][0]["model_id"] == "detector-1.0.0"
    assert catalog.get("/api/v1/models?tag=vision").json()["count"] == 4
    assert catalog.get("/api/v1/models?name=resnet&status=uploaded").json()["count"] == 4
    assert catalog.get("/api/v1/models?status=passed").json()["count"] == 0
    page = catalog.get("/api/v1/models?page_size=2&page=2").json()
    assert len(page["results"]) == 2 and page["previous"]


def test_it_orders_versions_by_semantic_precedence(catalog):
    ordered = catalog.get("/api/v1/models?name=resnet&ordering=-version").json()["results"]

    assert [v["version"] for v in ordered] == ["1.10.0", "1.2.0", "1.2.0-rc.1", "1.0.0"]


def test_it_rejects_an_unknown_filter_value_or_ordering(catalog):
    assert catalog.get("/api/v1/models?status=bogus").status_code == 400
    response = catalog.get("/api/v1/models?ordering=sha256")
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "ordering"


def test_it_shows_the_version_history_newest_first(catalog):
    history = catalog.get("/api/v1/models/resnet/versions").json()["results"]

    assert [v["version"] for v in history] == ["1.10.0", "1.2.0", "1.2.0-rc.1", "1.0.0"]
    assert catalog.get("/api/v1/models/nope/versions").json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_it_reads_one_version_by_model_id_and_by_name_and_version(catalog):
    by_id = catalog.get("/api/v1/models/resnet-1.2.0-rc.1").json()
    by_name = catalog.get("/api/v1/models/resnet/versions/1.2.0-rc.1").json()

    assert by_id == by_name
    assert by_id["version"] == "1.2.0-rc.1"
    missing = catalog.get("/api/v1/models/resnet-9.9.9")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_it_deprecates_a_version_idempotently(catalog):
    first = catalog.post("/api/v1/models/resnet/versions/1.0.0/deprecate")
    second = catalog.post("/api/v1/models/resnet/versions/1.0.0/deprecate")

    assert first.status_code == second.status_code == 200
    assert second.json()["status"] == "deprecated"
    assert first.json()["deprecated_at"] == second.json()["deprecated_at"]


def test_it_deletes_a_version_and_its_object(client_for, catalog, s3):
    admin = client_for("Admin")
    client, bucket = s3
    key = ModelVersion.objects.get(model_id="detector-1.0.0").storage_key

    response = admin.delete("/api/v1/models/detector-1.0.0")

    assert response.status_code == 204
    assert not ModelVersion.objects.filter(model_id="detector-1.0.0").exists()
    assert client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0
    assert catalog.get("/api/v1/models/detector/versions").status_code == 404  # last version took the model along


def test_it_refuses_to_delete_a_version_in_use(client_for, catalog, s3):
    def deployed(version):
        return "deployed on 3 devices" if version.model_id == "resnet-1.0.0" else None

    services.register_version_in_use_check(deployed)
    try:
        response = client_for("Admin").delete("/api/v1/models/resnet-1.0.0")
    finally:
        services.VERSION_IN_USE_CHECKS.remove(deployed)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "VERSION_IN_USE"
    assert "deployed on 3 devices" in response.json()["error"]["message"]
    client, bucket = s3
    key = ModelVersion.objects.get(model_id="resnet-1.0.0").storage_key
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0


def test_it_keeps_the_row_when_storage_cannot_delete(client_for, catalog, s3, monkeypatch):
    client, _bucket = s3

    def network_down(*args, **kwargs):
        raise EndpointConnectionError(endpoint_url="http://s3.invalid")

    monkeypatch.setattr(client, "delete_object", network_down)
    response = client_for("Admin").delete("/api/v1/models/resnet-1.0.0")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
    assert ModelVersion.objects.filter(model_id="resnet-1.0.0").exists()


def test_it_gives_a_presigned_link_that_serves_the_bytes_and_ranges(client_for):
    content = onnx_model_bytes(hidden=32)
    developer = client_for("ModelDeveloper")
    upload(developer, content)

    link = developer.get("/api/v1/models/resnet-1.0.0/download").json()

    assert link["sha256"] == sha256(content) and link["size_bytes"] == len(content)
    assert requests.get(link["url"], timeout=10).content == content
    partial = requests.get(link["url"], headers={"Range": "bytes=10-19"}, timeout=10)
    assert partial.status_code == 206 and partial.content == content[10:20]
    redirect = developer.get("/api/v1/models/resnet-1.0.0/download?redirect=true")
    assert redirect.status_code == 302 and redirect["Location"].startswith("http")


@pytest.fixture
def filesystem_storage(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    return tmp_path


def test_it_serves_local_artifacts_through_signed_links_with_range(client_for, filesystem_storage):
    content = onnx_model_bytes(hidden=32)
    developer = client_for("ModelDeveloper")
    assert upload(developer, content).status_code == 202
    url = developer.get("/api/v1/models/resnet-1.0.0/download").json()["url"]
    anonymous = client_for(None)
    anonymous.force_authenticate(None)

    whole = anonymous.get(url)
    partial = anonymous.get(url, HTTP_RANGE="bytes=100-")
    beyond = anonymous.get(url, HTTP_RANGE=f"bytes={len(content)}-")
    tampered = anonymous.get(url[:-3] + "abc")

    assert b"".join(whole.streaming_content) == content
    assert partial.status_code == 206
    assert partial["Content-Range"] == f"bytes 100-{len(content) - 1}/{len(content)}"
    assert b"".join(partial.streaming_content) == content[100:]
    assert beyond.status_code == 416
    assert tampered.status_code == 403 and tampered.json()["error"]["code"] == "INVALID_LINK"
    leftovers = [p.name for p in filesystem_storage.rglob("*") if p.is_file()]
    assert len(leftovers) == 1 and not leftovers[0].startswith(".")


def test_it_rejects_an_expired_local_link(client_for, filesystem_storage, settings):
    settings.ARTIFACT_URL_EXPIRY_SECONDS = -1
    developer = client_for("ModelDeveloper")
    upload(developer, onnx_model_bytes())
    url = developer.get("/api/v1/models/resnet-1.0.0/download").json()["url"]

    response = developer.get(url)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "LINK_EXPIRED"


def test_it_leaves_no_partial_file_when_a_local_upload_fails(client_for, filesystem_storage):
    response = upload(client_for("ModelDeveloper"), onnx_model_bytes(), sha256="1" * 64)

    assert response.status_code == 400
    assert [p for p in filesystem_storage.rglob("*") if p.is_file()] == []
