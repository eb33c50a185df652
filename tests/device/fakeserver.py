"""A small HotSwap stand-in over real HTTP (enroll, check-in, artifact files with Range), for agent tests."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hotswap_device.protocol import (
    ACTION_INSTALL,
    ACTION_REMOVE,
    CHECKIN_FIELDS,
    MAX_MODELS,
    MODEL_FIELDS,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_UNSUPPORTED,
    V1_RUNNING_FIELD,
    canonical_bytes,
)


def key_info(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"key_id": hashlib.sha256(raw).hexdigest()[:16], "algorithm": "ed25519",
            "public_key": base64.b64encode(raw).decode()}


def sign(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return {"manifest": manifest, "signature": base64.b64encode(key.sign(canonical_bytes(manifest))).decode(),
            "key_id": key_info(key)["key_id"]}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients closing keep-alive connections (or connections we cut on purpose) are not errors here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def protocol_problems(body: Any) -> tuple[str, list[dict[str, str]]]:
    """The v2 shape rules of a check-in body (PROTOCOL_V2): (error code, details), or ("", []) when it fits."""
    if not isinstance(body, dict) or body.get("protocol") != PROTOCOL_VERSION or V1_RUNNING_FIELD in body:
        return PROTOCOL_VERSION_UNSUPPORTED, [{"field": "protocol", "message": "This server speaks device protocol 2."}]
    details = [{"field": key, "message": "Unknown field."} for key in body if key not in CHECKIN_FIELDS]
    models = body.get("models")
    if not isinstance(models, list) or len(models) > MAX_MODELS:
        return "VALIDATION_ERROR", [*details, {"field": "models", "message": "Required: a list."}]
    seen: set[str] = set()
    for index, entry in enumerate(models):
        if not isinstance(entry, dict) or set(entry) != set(MODEL_FIELDS):
            details.append({"field": f"models[{index}]", "message": "Must be {model, version, sha256}."})
        elif entry["model"] in seen:
            details.append({"field": f"models[{index}].model", "message": "Listed twice."})
        else:
            seen.add(entry["model"])
    return ("VALIDATION_ERROR", details) if details else ("", [])


class FakeServer:
    """Speaks protocol v2 closely enough for the agent; every request is recorded for assertions.

    Desired state is kept per model slot, each with its own sequence; one ETag covers the whole set.
    """

    enroll_key = "hse_test_enroll"

    def __init__(self, *, poll_interval: int = 60) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.sign_with: Ed25519PrivateKey | None = None  # a different key: tampered manifests
        self.poll_interval = poll_interval
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.ignore_range = False
        self.requests: list[dict[str, Any]] = []
        self.checkins: list[dict[str, Any]] = []  # accepted check-in bodies
        self.forced: list[tuple[int, dict[str, Any]]] = []  # answers to give before behaving normally
        self.validate: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None
        self.desired: dict[str, dict[str, Any]] = {}  # model → its slot's desired state
        self.sequences: dict[str, int] = {}
        self.traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        self.credential = "hsd_test_" + secrets.token_hex(8)
        self.device_id: str | None = None
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- scripting ---------------------------------------------------------------------------

    def publish(self, model: str, version: str, content: bytes, *, served: bytes | None = None) -> str:
        """Stores an artifact (optionally serving other bytes than the ones it announces); returns its path."""
        path = f"/files/{model}-{version}.onnx"
        self.files[path] = content if served is None else served
        return path

    def _next_sequence(self, model: str, sequence: int | None) -> int:
        self.sequences[model] = self.sequences.get(model, 0) + 1 if sequence is None else sequence
        return self.sequences[model]

    def set_desired(self, model: str, version: str, content: bytes, *, rollback: bool = False,
                    served: bytes | None = None, expires_in: int = 900, device_id: str | None = None,
                    sequence: int | None = None) -> None:
        """The slot of `model` should run `version` (under the slot's next sequence, or the one given)."""
        path = self.publish(model, version, content, served=served)
        self.desired[model] = {"action": ACTION_INSTALL, "model": model, "version": version,
                               "sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "path": path,
                               "rollback": rollback, "expires_in": expires_in, "device_id": device_id,
                               "sequence": self._next_sequence(model, sequence)}

    def remove(self, model: str, *, sequence: int | None = None) -> None:
        """The device should unload and delete `model`."""
        self.desired[model] = {"action": ACTION_REMOVE, "model": model, "expires_in": 900, "device_id": None,
                               "sequence": self._next_sequence(model, sequence)}

    def sequence(self, model: str) -> int:
        return self.sequences[model]

    @property
    def etag(self) -> str:
        # One ETag over the whole desired set: every slot's model, sequence, version, rollback and action.
        parts = sorted((d["model"], d["sequence"], d.get("version"), d.get("rollback"), d["action"], d["expires_in"])
                       for d in self.desired.values())
        return f'"{hashlib.sha256(repr(parts).encode()).hexdigest()[:16]}-{id(self.sign_with)}"'

    def answer_desired(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        answer = []
        for d in self.desired.values():
            manifest = {"action": d["action"], "device_id": d["device_id"] or self.device_id, "model": d["model"],
                        "issued_at": iso(now), "expires_at": iso(now + timedelta(seconds=d["expires_in"])),
                        "sequence": d["sequence"]}
            if d["action"] == ACTION_INSTALL:
                manifest.update(version=d["version"], sha256=d["sha256"], size=d["size"], url=self.url + d["path"],
                                format="onnx", rollback=d["rollback"])
            answer.append(sign(manifest, self.sign_with or self.key))
        return answer

    def file_requests(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "GET" and r["path"] == path]

    @property
    def installs(self) -> list[dict[str, Any]]:
        return [item for body in self.checkins for item in body.get("installs", [])]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [item for body in self.checkins for item in body.get("metrics", [])]


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, details: list[dict[str, str]] | None = None) -> None:
            self._json(status, {"error": {"code": code, "message": code.lower(), "details": details or [],
                                          "trace_id": "t", "timestamp": iso(datetime.now(UTC))}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw or b"{}")
            with server.lock:
                server.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                        "body": body})
            if self.path == "/api/v1/devices/enroll":
                if body.get("enrollment_key") != server.enroll_key:
                    return self._error(403, "ENROLLMENT_KEY_INVALID")
                server.device_id = body["device_id"]
                return self._json(201, {"protocol": PROTOCOL_VERSION, "device_id": body["device_id"],
                                        "credential": server.credential,
                                        "checkin_url": "/api/v1/devices/checkin",
                                        "poll_interval_seconds": server.poll_interval,
                                        "manifest_public_key": key_info(server.key)})
            if self.path != "/api/v1/devices/checkin":
                return self._error(404, "NOT_FOUND")
            if self.headers.get("Authorization") != f"Device {server.credential}":
                return self._error(401, "DEVICE_CREDENTIAL_INVALID")
            if server.forced:
                status, answer = server.forced.pop(0)
                return self._json(status, answer)
            code, details = protocol_problems(body)
            if code:
                return self._error(400, code, details)
            details = server.validate(body) if server.validate else []
            if details:
                return self._error(400, "VALIDATION_ERROR", details)
            with server.lock:
                server.checkins.append(body)
            headers = {"ETag": server.etag, "traceparent": server.traceparent}
            if self.headers.get("If-None-Match") == server.etag:
                self.send_response(304)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                return None
            return self._json(200, {"protocol": PROTOCOL_VERSION, "desired": server.answer_desired(),
                                    "poll_interval_seconds": server.poll_interval,
                                    "accepted": {"installs": len(body.get("installs", [])),
                                                 "metrics": len(body.get("metrics", []))},
                                    "server_time": iso(datetime.now(UTC))}, headers)

        def do_GET(self) -> None:
            with server.lock:
                server.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
            data = server.files.get(self.path)
            if data is None:
                return self._error(404, "NOT_FOUND")
            start, status = 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and not server.ignore_range:
                start, status = int(match.group(1)), 206
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
            part = data[start:]
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(part)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            cut = server.cut_after.pop(self.path, None)
            if cut is not None:
                # Half the promised bytes, then the connection dies: what a flaky link looks like to the client.
                self.wfile.write(part[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            self.wfile.write(part)
            return None

    return Handler
