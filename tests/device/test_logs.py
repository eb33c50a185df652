"""The agent logs the URLs it fetches (httpx, at INFO) without the signatures of download links."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from hotswap_device.logs import SignedUrlFilter, redact_signed_urls

ROOT = Path(__file__).resolve().parents[2]
SIGNED_QUERY = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=hotswap%2F20261203%2Fus-east-1%2Fs3%2Faws4_request"
                "&X-Amz-Date=20261203T120000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
                "&X-Amz-Signature=5e1f0c0ffee5e1f0c0ffee")
LOCAL_TOKEN = "eyJrZXkiOiJhcnRpZmFjdHMvcmVzbmV0In0:1vQx7a:Zm9vYmFyc2lnbmF0dXJl"


def test_it_removes_a_presigned_query_and_a_local_token_and_leaves_other_urls_alone():
    assert redact_signed_urls(f"GET https://s3.example.com/bucket/m.onnx?{SIGNED_QUERY} 200") == (
        "GET https://s3.example.com/bucket/m.onnx?… 200")
    assert redact_signed_urls(f'"GET /api/v1/artifacts/{LOCAL_TOKEN} HTTP/1.1" 206') == (
        '"GET /api/v1/artifacts/… HTTP/1.1" 206')
    plain = "POST http://127.0.0.1:8000/api/v1/devices/checkin?page=2 200"
    assert redact_signed_urls(plain) == plain


def test_the_filter_cleans_formatted_messages_and_fields():
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%s"',
                               ("GET", f"https://s3/m.onnx?{SIGNED_QUERY}", "HTTP/1.1 200 OK"), None)
    record.path = f"/api/v1/artifacts/{LOCAL_TOKEN}"

    assert SignedUrlFilter().filter(record)
    assert record.getMessage() == 'HTTP Request: GET https://s3/m.onnx?… "HTTP/1.1 200 OK"'
    assert record.path == "/api/v1/artifacts/…"


def test_the_agent_command_logs_its_download_without_the_signature(server, models, tmp_path):
    server.set_desired("resnet", "1.0.0", models["1.0.0"])
    signed = f"{server.desired['resnet']['path']}?{SIGNED_QUERY}"
    server.files[signed] = server.files[server.desired["resnet"]["path"]]
    server.desired["resnet"]["path"] = signed

    done = subprocess.run([sys.executable, "-m", "hotswap_device", "--server", server.url,
                           "--enroll-key", server.enroll_key, "--data-dir", str(tmp_path / "agent"), "--once"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert server.file_requests(signed), done.stderr  # it did fetch the signed URL
    assert "HTTP Request: GET" in done.stderr and "/files/resnet-1.0.0.onnx?…" in done.stderr, done.stderr
    assert "X-Amz-Signature" not in done.stderr and "5e1f0c0ffee" not in done.stderr, done.stderr
