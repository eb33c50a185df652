"""Fixtures for registry tests: the real S3 bucket, upload helpers."""

import hashlib

import pytest
import requests

from hotswap.accounts.roles import Role
from models_app.storage import artifact_store
from tests.artifacts import onnx_model_bytes


@pytest.fixture
def s3():
    """(client, bucket) of the real S3 server the test run uses."""
    store = artifact_store()
    return store.client, store.bucket


@pytest.fixture
def stored_keys(s3):
    """Keys of every object and every unfinished multipart upload in the bucket: 'nothing left behind' checks."""
    client, bucket = s3

    def keys() -> set[str]:
        objects = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                   for o in page.get("Contents", [])}
        uploads = {f"multipart:{u['Key']}" for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
        return objects | uploads

    return keys


@pytest.fixture
def console(make_user):
    """A browser session of an Admin in the console."""
    from django.test import Client

    client = Client()
    client.force_login(make_user("Admin", is_staff=True))
    return client


@pytest.fixture
def developer(client_for):
    return client_for(Role.MODEL_DEVELOPER)


def upload(client, content: bytes, *, filename: str = "model.onnx", **fields):
    """POSTs a multipart upload the way CI does (with the artifact's sha256 unless `sha256=` says otherwise)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {"name": "resnet", "version": "1.0.0", "framework": "onnx", "sha256": sha256(content), **fields}
    data = {k: v for k, v in data.items() if v is not None}
    data["artifact"] = SimpleUploadedFile(filename, content, content_type="application/octet-stream")
    return client.post("/api/v1/models", data, format="multipart")


def start(client, content: bytes, **fields):
    """Starts (or resumes) an upload session for `content` (POST /api/v1/uploads)."""
    body = {"name": "llm", "version": "1.0.0", "framework": "onnx", "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(), "filename": "llm.onnx", **fields}
    return client.post("/api/v1/uploads", body, format="json")


def part_of(content: bytes, session: dict, number: int) -> bytes:
    """The bytes of part `number` of `content` in that session."""
    offset = (number - 1) * session["part_size"]
    return content[offset: offset + session["part_size"]]


def send(client, session: dict, content: bytes, numbers, *, body=part_of) -> None:
    """PUTs parts the way the contract says: to S3 with no credentials at all, or to the API with the caller's."""
    answer = client.post(f"/api/v1/uploads/{session['id']}/parts", {"numbers": list(numbers)}, format="json")
    assert answer.status_code == 200, answer.json()
    for target in answer.json()["parts"]:
        data = body(content, session, target["number"])
        if target["auth"]:
            response = client.put(target["url"], data=data, content_type="application/octet-stream")
            assert response.status_code == 200, response.json()
        else:
            assert requests.put(target["url"], data=data, timeout=30).status_code == 200


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def onnx_bytes() -> bytes:
    return onnx_model_bytes()


def npz_bytes(**arrays) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **(arrays or {"inputs": np.zeros((4, 4), dtype=np.float32), "labels": np.zeros(4, np.int64)}))
    return buffer.getvalue()


def upload_test_set(client, model: str, name: str = "holdout", content: bytes | None = None):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(f"/api/v1/models/{model}/test-sets",
                       {"name": name, "artifact": SimpleUploadedFile("set.npz", content or npz_bytes())},
                       format="multipart")
