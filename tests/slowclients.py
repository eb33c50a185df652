"""Slow clients against a web server, and a check-in latency probe: what a slow-loris does to everyone else.

`python -m tests.slowclients --port 8000 --count 50` keeps 50 connections trickling one byte per second
(a third send their headers that way, a third a check-in body, a third an artifact upload) until stopped,
reconnecting those the server closes. With `--probe-credential KEY --probes 200` it instead measures
check-in latency by itself, for the before/after figures of a server setting. The tests run it as a
separate process (`slow_clients()`), so its sockets do not compete with the measuring process for the GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CHECKIN_PATH = "/api/v1/devices/checkin"
READY = "slow clients ready"
IDLE_CHECKIN = {"protocol": 2, "models": []}  # device protocol 2: a device that runs no model yet


KINDS = ("headers", "body", "upload")


def _head(kind: str, host: str) -> bytes:
    if kind == "headers":  # a header line that never ends
        return f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
    if kind == "upload":  # an artifact upload (too large to buffer) that never gets anywhere
        return (f"POST /api/v1/models HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 1000000000\r\n\r\n--b\r\n").encode()
    # complete headers, then a body far longer than what will ever be sent
    return (f"POST {CHECKIN_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Device slow\r\n"
            "Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n{").encode()


@dataclass
class _Connection:
    kind: str
    sock: socket.socket | None = None


def _open(host: str, port: int, kind: str, context: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=host)
    sock.sendall(_head(kind, host))
    return sock


def trickle(host: str, port: int, count: int, *, context: ssl.SSLContext | None, interval: float = 1.0) -> None:
    """Keeps `count` connections open and trickling (one byte each per `interval`) until SIGTERM."""
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    connections = [_Connection(KINDS[i % len(KINDS)]) for i in range(count)]
    reconnects = 0
    announced = False
    while not stop:
        for connection in connections:
            try:
                if connection.sock is None:
                    connection.sock = _open(host, port, connection.kind, context)
                else:
                    connection.sock.sendall(b"a" if connection.kind == "headers" else b" ")
            except OSError:
                # The server gave up on it (a header or body timeout): come back, as an attacker would.
                if connection.sock is not None:
                    connection.sock.close()
                    connection.sock = None
                    reconnects += 1
        if not announced and all(c.sock is not None for c in connections):
            print(READY, flush=True)
            announced = True
        time.sleep(interval)
    print(f"slow clients: {count} kept open, {reconnects} reconnected after the server closed them",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def slow_clients(port: int, count: int, *, cafile: Path | None = None, timeout: float = 120) -> Iterator[None]:
    """Runs `count` slow clients against 127.0.0.1:`port` (TLS when `cafile` is given) in a child process."""
    argv = [sys.executable, "-m", "tests.slowclients", "--port", str(port), "--count", str(count)]
    if cafile:
        argv += ["--cafile", str(cafile)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        line = process.stdout.readline()  # type: ignore[union-attr]
        if READY not in line or time.monotonic() > deadline:
            raise RuntimeError(f"the slow clients did not connect: {line!r}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def checkin_latencies(base_url: str, credential: str, count: int, *, verify: str | bool = True) -> list[float]:
    """`count` check-ins one after the other, each on a new connection, as devices polling on a timer do."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = requests.post(f"{base_url}{CHECKIN_PATH}", json=IDLE_CHECKIN, timeout=15, verify=verify,
                                 headers={"Authorization": f"Device {credential}", "Connection": "close"})
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, (response.status_code, response.text[:300])
    return seconds


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.slowclients", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--cafile", help="speak TLS, trusting this certificate")
    parser.add_argument("--probe-credential", help="measure check-in latency with this device credential instead")
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args(argv)
    if args.probe_credential:
        scheme = "https" if args.cafile else "http"
        samples = checkin_latencies(f"{scheme}://{args.host}:{args.port}", args.probe_credential, args.probes,
                                    verify=args.cafile or True)
        print(f"{len(samples)} check-ins: p50 {sorted(samples)[len(samples) // 2] * 1000:.1f} ms, "
              f"p99 {p99(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms")
        return 0
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    trickle(args.host, args.port, args.count, context=context)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
