"""Uploads against a real gunicorn: memory stays flat for big artifacts, and S3 dying mid-upload is clean."""

import hashlib
import threading

import psutil
import pytest
import requests
from rest_framework_simplejwt.tokens import AccessToken

from hotswap.lib.localservices import SeaweedFS
from models_app.models import ModelVersion
from tests.artifacts import onnx_model_bytes
from tests.live import StreamingMultipart, gunicorn_server, rss_kb, rss_peak_reset

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MB = 1024 * 1024


@pytest.fixture
def big_model(tmp_path):
    path = tmp_path / "big.onnx"
    path.write_bytes(onnx_model_bytes(big_initializer_bytes=200 * MB))
    return path


@pytest.fixture
def bearer(make_user):
    return {"Authorization": f"Bearer {AccessToken.for_user(make_user('ModelDeveloper'))}"}


def _worker_pid(master) -> int:
    return psutil.Process(master.pid).children()[0].pid


def _post(base_url, headers, body):
    # A sized iterable: requests sends Content-Length and streams it, never holding the whole body.
    return requests.post(f"{base_url}/api/v1/models", data=body, timeout=300,
                         headers={**headers, "Content-Type": body.content_type})


def test_it_uploads_200_mb_with_under_64_mb_of_server_memory_growth(big_model, bearer, tmp_path):
    digest = hashlib.sha256(big_model.read_bytes()).hexdigest()
    with gunicorn_server() as (base_url, master):
        worker = _worker_pid(master)
        # Warm up: the first upload loads the S3 client's service model once (~15 MB) for the worker's life.
        warm_up = tmp_path / "small.onnx"
        warm_up.write_bytes(onnx_model_bytes())
        assert _post(base_url, bearer, StreamingMultipart(
            {"name": "small", "version": "1.0.0", "framework": "onnx",
             "sha256": hashlib.sha256(warm_up.read_bytes()).hexdigest()}, warm_up)).status_code == 202
        baseline_kb = rss_kb(worker, "VmRSS")
        rss_peak_reset(worker)

        body = StreamingMultipart({"name": "big", "version": "1.0.0", "framework": "onnx", "sha256": digest},
                                  big_model)
        response = _post(base_url, bearer, body)

        growth_mb = (rss_kb(worker, "VmHWM") - baseline_kb) / 1024
    assert response.status_code == 202, response.text
    assert response.json()["size_bytes"] == big_model.stat().st_size
    assert growth_mb < 64, f"server memory grew by {growth_mb:.0f} MB for a 200 MB upload"


def test_it_answers_503_and_leaves_nothing_when_s3_stops_mid_upload(big_model, bearer, tmp_path, settings):
    s3 = SeaweedFS(tmp_path / "dying-s3").start()
    try:
        s3.create_bucket("dying")
        env = {"S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": "dying", "S3_MAX_ATTEMPTS": "2",
               "S3_CONNECT_TIMEOUT": "2", "ARTIFACT_PART_BYTES": str(8 * MB)}
        stopped = threading.Event()

        def stop_s3_at_a_third(sent: int) -> None:
            if sent > 60 * MB and not stopped.is_set():
                stopped.set()
                s3.stop()

        with gunicorn_server(env=env) as (base_url, _master):
            body = StreamingMultipart({"name": "big", "version": "1.0.0", "framework": "onnx", "sha256": "0" * 64},
                                      big_model,
                                      on_chunk=stop_s3_at_a_third)
            response = _post(base_url, bearer, body)
        assert stopped.is_set()
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
        assert not ModelVersion.objects.exists()

        s3.start()  # same ports and data: look inside
        client = s3.client()
        assert client.list_objects_v2(Bucket="dying").get("KeyCount", 0) == 0
    finally:
        s3.stop()


def test_it_refuses_a_truncated_upload_and_keeps_nothing(bearer, tmp_path, stored_keys):
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_model_bytes(big_initializer_bytes=8 * MB))
    body = StreamingMultipart({"name": "cut", "version": "1.0.0", "framework": "onnx",
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}, path)
    raw = b"".join(body)
    before = stored_keys()

    with gunicorn_server() as (base_url, _master):
        import socket
        from urllib.parse import urlsplit

        host = urlsplit(base_url)
        with socket.create_connection((host.hostname, host.port), timeout=30) as sock:
            sock.sendall(
                f"POST /api/v1/models HTTP/1.1\r\nHost: {host.netloc}\r\nAuthorization: {bearer['Authorization']}"
                f"\r\nContent-Type: {body.content_type}\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
                .encode()
            )
            sock.sendall(raw[: len(raw) // 2])
            sock.shutdown(socket.SHUT_WR)  # the client dies halfway
            answer = b""
            while data := sock.recv(65536):
                answer += data
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 400 " in status_line or not answer, status_line
    assert not ModelVersion.objects.exists()
    assert stored_keys() == before
