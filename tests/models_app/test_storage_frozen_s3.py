"""A frozen S3 (SIGSTOP) fails an upload fast with 503, and the abort it could not run is done later."""

import copy
import os
import signal
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from hotswap.lib.localservices import SeaweedFS
from models_app.models import ModelVersion, MultipartAbort
from models_app.storage import artifact_store
from models_app.tasks import artifact_abandoned_uploads_cleanup
from tests.artifacts import onnx_model_bytes
from tests.live import StreamingMultipart

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MB = 1024 * 1024
CONNECT, READ, ATTEMPTS = 1, 2, 2


@pytest.fixture
def own_s3(tmp_path, settings):
    """A SeaweedFS of this test's own (it gets frozen), with small S3 timeouts; always resumed and stopped."""
    s3 = SeaweedFS(tmp_path / "frozen-s3").start()
    try:
        s3.create_bucket("frozen")
        artifacts = copy.deepcopy(settings.STORAGES["artifacts"])
        artifacts["OPTIONS"].update(endpoint_url=s3.endpoint_url, bucket_name="frozen",
                                    access_key=s3.access_key, secret_key=s3.secret_key)
        settings.STORAGES = {**settings.STORAGES, "artifacts": artifacts}
        settings.S3_CONNECT_TIMEOUT, settings.S3_READ_TIMEOUT, settings.S3_MAX_ATTEMPTS = CONNECT, READ, ATTEMPTS
        yield s3
    finally:
        if s3.process and s3.process.poll() is None:
            os.killpg(s3.process.pid, signal.SIGCONT)
        s3.stop()


def open_uploads(s3) -> list[dict]:
    return s3.client().list_multipart_uploads(Bucket="frozen").get("Uploads", [])


def test_it_answers_503_within_the_s3_timeouts_and_cleans_the_abandoned_upload_later(own_s3, live_server, make_user,
                                                                                     tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(onnx_model_bytes(big_initializer_bytes=40 * MB))
    frozen_at: list[float] = []

    def freeze_once_the_multipart_upload_started(sent: int) -> None:
        if not frozen_at and open_uploads(own_s3):
            os.killpg(own_s3.process.pid, signal.SIGSTOP)
            frozen_at.append(time.monotonic())

    body = StreamingMultipart({"name": "frozen", "version": "1.0.0", "framework": "onnx", "sha256": "0" * 64},
                              model, on_chunk=freeze_once_the_multipart_upload_started)
    token = AccessToken.for_user(make_user("ModelDeveloper"))
    try:
        response = requests.post(f"{live_server.url}/api/v1/models", data=body, timeout=90,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": body.content_type})
        waited = time.monotonic() - frozen_at[0]
    finally:
        os.killpg(own_s3.process.pid, signal.SIGCONT)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
    # Every call gives up after ATTEMPTS x (connect + read) plus botocore's backoff (< 2 s here); the abort
    # that cannot reach S3 is not waited for, so the whole answer fits in one call's budget, the backoff and
    # 2 s for a loaded machine (4.2 s measured; more than 90 s before: the client gave up first).
    assert waited < ATTEMPTS * (CONNECT + READ) + 2 + 2, f"503 came {waited:.1f} s after S3 froze"
    assert not ModelVersion.objects.exists()
    assert MultipartAbort.objects.count() == 1  # kept for the cleanup task, not lost with the request
    assert len(open_uploads(own_s3)) == 1

    assert artifact_abandoned_uploads_cleanup.apply().get() == 1
    assert open_uploads(own_s3) == []
    assert not MultipartAbort.objects.exists()
    assert artifact_abandoned_uploads_cleanup.apply().get() == 0  # runs twice, same result
    assert open_uploads(own_s3) == []


def test_it_keeps_an_abort_it_could_not_run_and_retries_it_until_s3_answers(own_s3, db):
    store = artifact_store()
    upload_id = store.client.create_multipart_upload(Bucket="frozen", Key="artifacts/2026/01/cut")["UploadId"]
    os.killpg(own_s3.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert artifact_abandoned_uploads_cleanup.apply().get() == 0
        assert time.monotonic() - started < ATTEMPTS * (CONNECT + READ) + 2 + 2
    finally:
        os.killpg(own_s3.process.pid, signal.SIGCONT)
    assert [u["UploadId"] for u in open_uploads(own_s3)] == [upload_id]

    # Young, so only a recorded abort would be retried: this one is found by listing, once it is old.
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    assert artifact_abandoned_uploads_cleanup.apply(kwargs={"now": later}).get() == 1
    assert open_uploads(own_s3) == []

