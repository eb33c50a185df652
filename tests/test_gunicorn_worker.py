"""runstack's gunicorn worker: requests are read before a thread takes them, and every kind still gets its answer."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from hotswap.gunicorn_worker import BUFFERED_BODY_BYTES, HEAD_LIMIT_BYTES, request_ready
from tests import live
from tests.devices.checkin_helpers import device_with_credential

HEAD = b"POST /api/v1/devices/checkin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n"


def test_a_request_is_ready_once_its_head_and_small_body_are_in():
    assert request_ready(b"GET /health HTTP/1.1\r\nHost: localhost\r\n") is False
    assert request_ready(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n") is True
    assert request_ready(HEAD + b"{}") is False
    assert request_ready(HEAD + b'{"a"}') is True
    assert request_ready(HEAD.replace(b"Content-Length", b"content-LENGTH") + b'{"a"}') is True


def test_large_chunked_and_doubtful_bodies_go_to_the_thread_as_they_come():
    big = f"POST /api/v1/models HTTP/1.1\r\nContent-Length: {BUFFERED_BODY_BYTES + 1}\r\n\r\n".encode()
    assert request_ready(big) is True  # an artifact upload streams through the app
    assert request_ready(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") is True
    # Two lengths: gunicorn's parser refuses it, not this read-ahead.
    assert request_ready(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n") is True


def test_an_endless_head_is_refused():
    assert request_ready(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * HEAD_LIMIT_BYTES) is None


def exchange(port: int, pieces: list[bytes], pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.django_db(transaction=True)
def test_it_answers_trickled_pipelined_chunked_and_oversized_requests(tmp_path):
    _device, credential = device_with_credential("cam-worker-1")
    body = json.dumps({"protocol": 2, "models": []}).encode()
    checkin = (f"POST /api/v1/devices/checkin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Device {credential}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with live.runstack_gunicorn(tmp_path) as (base, _out, _err):
        port = int(base.rsplit(":", 1)[1])
        # A check-in that arrives a few bytes at a time is answered once it is complete.
        trickled = exchange(port, [checkin[i:i + 7] for i in range(0, len(checkin), 7)], pause=0.01)
        assert trickled.startswith(b"HTTP/1.1 200"), trickled[:200]
        # Two requests in one packet, the second cut short: the first is answered, the second waits for its end.
        second = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        pipelined = exchange(port, [checkin + second[:10], second[10:]], pause=0.2)
        assert pipelined.count(b"HTTP/1.1 200") == 2, pipelined[:400]

        with requests.Session() as session:  # kept-alive connections, a chunked body, a body over the cap
            headers = {"Authorization": f"Device {credential}", "Content-Type": "application/json"}
            for _ in range(3):
                assert session.post(f"{base}/api/v1/devices/checkin", data=body, headers=headers,
                                    timeout=10).status_code == 200
            chunked = session.post(f"{base}/api/v1/devices/checkin", data=iter([body[:5], body[5:]]),
                                   headers=headers, timeout=10)
            assert chunked.status_code in (200, 411), chunked.text
            oversized = session.post(f"{base}/api/v1/devices/checkin", data=b" " * (BUFFERED_BODY_BYTES + 10),
                                     headers=headers, timeout=10)
            assert oversized.status_code == 413, oversized.text


@pytest.mark.django_db(transaction=True)
def test_a_request_that_does_not_arrive_in_time_is_answered_408_and_closed(tmp_path):
    with live.runstack_gunicorn(tmp_path, env={"REQUEST_READ_TIMEOUT_SECONDS": "1"}) as (base, _out, _err):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
            started = time.monotonic()
            answer = sock.recv(65536)
            waited = time.monotonic() - started
            assert sock.recv(65536) == b""  # closed
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert 0.5 < waited < 10, waited
        assert requests.get(f"{base}/health", timeout=10).status_code == 200
