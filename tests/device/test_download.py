"""Streaming download: resume with Range after a cut connection, start over on 200, verify size and sha256."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from hotswap_device.download import DownloadInterrupted, IntegrityError, download

CONTENT = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not a multiple of the chunk size
SHA = hashlib.sha256(CONTENT).hexdigest()


def fetch(server, tmp_path, **kwargs):
    with httpx.Client() as client:
        return download(client, server.url + "/files/m-1.0.0.onnx", tmp_path / "m.partial", size=len(CONTENT),
                        sha256=SHA, sleep=lambda _: None, **kwargs)


def test_it_resumes_with_range_after_the_connection_is_cut(server, tmp_path):
    server.files["/files/m-1.0.0.onnx"] = CONTENT
    server.cut_after["/files/m-1.0.0.onnx"] = len(CONTENT) // 2

    path = fetch(server, tmp_path)

    assert path.read_bytes() == CONTENT
    first, second = server.file_requests("/files/m-1.0.0.onnx")
    assert "Range" not in first["headers"]
    # It asked only for what was missing, from exactly where the first transfer stopped.
    have = int(second["headers"]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < have <= len(CONTENT) // 2


def test_it_resumes_a_partial_file_left_by_an_earlier_run(server, tmp_path):
    server.files["/files/m-1.0.0.onnx"] = CONTENT
    (tmp_path / "m.partial").write_bytes(CONTENT[:1000])

    assert fetch(server, tmp_path).read_bytes() == CONTENT
    [request] = server.file_requests("/files/m-1.0.0.onnx")
    assert request["headers"]["Range"] == "bytes=1000-"


def test_it_starts_over_when_the_server_ignores_the_range(server, tmp_path):
    server.files["/files/m-1.0.0.onnx"] = CONTENT
    server.ignore_range = True
    (tmp_path / "m.partial").write_bytes(b"x" * 1000)  # not even a right prefix: must be thrown away

    assert fetch(server, tmp_path).read_bytes() == CONTENT


def test_it_deletes_tampered_bytes_as_a_sha256_mismatch(server, tmp_path):
    tampered = bytearray(CONTENT)
    tampered[12345] ^= 0xFF
    server.files["/files/m-1.0.0.onnx"] = bytes(tampered)

    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        fetch(server, tmp_path)

    assert not (tmp_path / "m.partial").exists()


def test_it_deletes_a_file_longer_than_promised(server, tmp_path):
    server.files["/files/m-1.0.0.onnx"] = CONTENT + b"extra"

    with pytest.raises(IntegrityError, match="size mismatch"):
        fetch(server, tmp_path)

    assert not (tmp_path / "m.partial").exists()


def test_it_keeps_the_partial_file_when_every_attempt_is_cut(server, tmp_path):
    server.files["/files/m-1.0.0.onnx"] = CONTENT
    server.cut_after["/files/m-1.0.0.onnx"] = 1024 * 1024

    with pytest.raises(DownloadInterrupted):
        fetch(server, tmp_path, attempts=1)

    assert 0 < (tmp_path / "m.partial").stat().st_size < len(CONTENT)
    assert fetch(server, tmp_path).read_bytes() == CONTENT  # and the next attempt finishes it


def test_it_reports_an_http_error_as_interrupted(server, tmp_path):
    with pytest.raises(DownloadInterrupted, match="HTTP 404"):
        fetch(server, tmp_path, attempts=2)
