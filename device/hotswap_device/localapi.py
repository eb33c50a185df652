"""The agent's local inference API over HTTP, for applications not written in Python (README: "Local API").

    GET  /v1/models                       every model serving now, with its version and input/output signature
    POST /v1/models/<model>/infer         {"inputs": {"<name>": {"dtype": "float32", "shape": [1, 4], "data": [...]}}}
    POST /v1/feedback                     {"inference_id": "...", "label": 3}  (or "correct": true, or "expected")

It listens on 127.0.0.1 unless told otherwise and has no authentication: anything that can reach the port can
run the models. POSTs must be `Content-Type: application/json` and, on loopback, name a loopback Host, so a web
page the device's browser opens cannot call it. Errors use the server's error shape
`{"error": {"code", "message", "details": [{"field", "message"}]}}`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from hotswap_device.agent import Agent, UnknownInference
from hotswap_device.runtime import InferenceFailed, InvalidInputs, NoActiveModel

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
MAX_BODY_BYTES = 16 * 1024 * 1024
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool")
_INFER_PATH = re.compile(r"^/v1/models/([^/]+)/infer$")


class RequestInvalid(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []


def _invalid(field: str, message: str) -> RequestInvalid:
    return RequestInvalid(400, "VALIDATION_ERROR", "The request is not valid.", [{"field": field, "message": message}])


def decode_tensor(value: Any, where: str) -> np.ndarray:
    """{"dtype", "shape", "data"} (nested or flat list) or {"dtype", "shape", "b64"} (raw little-endian bytes)."""
    if not isinstance(value, dict):
        raise _invalid(where, 'Must be an object {"dtype", "shape", "data"}.')
    dtype, shape = value.get("dtype"), value.get("shape")
    if dtype not in DTYPES:
        raise _invalid(f"{where}.dtype", f"Must be one of {', '.join(DTYPES)}.")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape) or len(shape) > 8:
        raise _invalid(f"{where}.shape", "Must be a list of at most 8 non-negative integers.")
    size = math.prod(shape)
    try:
        if "b64" in value:
            raw = base64.b64decode(str(value["b64"]), validate=True)
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        elif "data" in value:
            array = np.asarray(value["data"], dtype=dtype)
        else:
            raise _invalid(where, 'Give the values as "data" (a list) or "b64" (raw little-endian bytes).')
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise _invalid(f"{where}.data", f"Cannot be read as {dtype}: {exc}") from None
    if array.size != size:
        raise _invalid(f"{where}.data", f"Holds {array.size} values; shape {shape} needs {size}.")
    return array.astype(dtype, copy=False).reshape(shape)


def encode_output(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.tolist()}
    return value  # non-tensor outputs (sequences, maps) as JSON can carry them


class LocalApi:
    """The local API of one agent; `start()` serves it on a background thread, `close()` stops it."""

    def __init__(self, agent: Agent, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.agent = agent
        self.loopback = _is_loopback(host)
        if not self.loopback:
            logger.warning("the local inference API listens on %s, beyond this machine, with no authentication",
                           host)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="local-api", daemon=True)

    def start(self) -> LocalApi:
        self._thread.start()
        logger.info("local inference API on %s", self.url)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the three calls ---------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"models": list(self.agent.models().values())}

    def infer(self, model: str, body: Any) -> dict[str, Any]:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, dict) or not inputs:
            raise _invalid("inputs", 'Must be an object of input name to {"dtype", "shape", "data"}.')
        feeds = {str(name): decode_tensor(value, f"inputs.{name}") for name, value in inputs.items()}
        try:
            served = self.agent.infer(model, feeds)
        except NoActiveModel:
            raise RequestInvalid(404, "MODEL_NOT_RUNNING", f"No model {model!r} runs on this device.") from None
        except InvalidInputs as exc:
            raise _invalid("inputs", str(exc)) from None
        except InferenceFailed as exc:
            raise RequestInvalid(500, "INFERENCE_FAILED", str(exc)) from None
        return {"inference_id": served.inference_id, "model": served.model, "version": served.version,
                "outputs": {name: encode_output(value) for name, value in served.outputs.items()}}

    def feedback(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("inference_id"), str):
            raise _invalid("inference_id", "Required: the id an infer call answered.")
        given = [key for key in ("correct", "label", "expected") if key in body]
        if len(given) != 1:
            raise _invalid("body", 'Give exactly one of "correct" (true/false), "label" (a class index) or '
                                   '"expected" (output name to tensor).')
        key, value = given[0], body[given[0]]
        if key == "correct" and not isinstance(value, bool):
            raise _invalid("correct", "Must be true or false.")
        if key == "label" and (not isinstance(value, int) or isinstance(value, bool)):
            raise _invalid("label", "Must be an integer class index.")
        if key == "expected":
            if not isinstance(value, dict) or not value:
                raise _invalid("expected", 'Must be an object of output name to {"dtype", "shape", "data"}.')
            value = {str(name): decode_tensor(tensor, f"expected.{name}") for name, tensor in value.items()}
        try:
            correct = self.agent.feedback(body["inference_id"], value)
        except UnknownInference:
            raise RequestInvalid(404, "INFERENCE_UNKNOWN", "No such inference among the recent ones, or it already "
                                                           "has feedback.") from None
        except ValueError as exc:
            raise _invalid(key, str(exc)) from None
        return {"inference_id": body["inference_id"], "correct": correct}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _handler(api: LocalApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hotswap-agent-local"
        # Headers and body leave in two writes; with Nagle's algorithm the second waits for the client's
        # delayed ACK, ~40 ms per call on a kept-alive connection.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("local API: " + format, *args)

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body, allow_nan=False, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.command == "POST" and not getattr(self, "consumed", False):
                # The unread body would be taken for the next request on this connection.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _error(self, error: RequestInvalid) -> None:
            self._send(error.status, {"error": {"code": error.code, "message": error.message,
                                                "details": error.details}})

        def _guard(self) -> None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if api.loopback and not _is_loopback(host):
                # A DNS-rebinding page would call with its own host name.
                raise RequestInvalid(403, "HOST_NOT_ALLOWED", "This API answers only requests made to a loopback "
                                                             "address.")

        def do_GET(self) -> None:
            try:
                self._guard()
                if self.path.split("?")[0] != "/v1/models":
                    raise RequestInvalid(404, "NOT_FOUND", f"No such endpoint: GET {self.path}")
                self._send(200, api.models())
            except RequestInvalid as error:
                self._error(error)

        def do_POST(self) -> None:
            self.consumed = False
            try:
                self._guard()
                body = self._body()
                match = _INFER_PATH.match(self.path)
                if match:
                    self._send(200, api.infer(match.group(1), body))
                elif self.path == "/v1/feedback":
                    self._send(200, api.feedback(body))
                else:
                    raise RequestInvalid(404, "NOT_FOUND", f"No such endpoint: POST {self.path}")
            except RequestInvalid as error:
                self._error(error)
            except ValueError as exc:  # outputs holding NaN cannot be JSON
                self._error(RequestInvalid(500, "INFERENCE_FAILED", f"The outputs cannot be encoded: {exc}"))

        def _body(self) -> Any:
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                raise RequestInvalid(415, "UNSUPPORTED_MEDIA_TYPE", "Send Content-Type: application/json.")
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                raise RequestInvalid(411, "LENGTH_REQUIRED", "Send a Content-Length.") from None
            if length > MAX_BODY_BYTES:
                raise RequestInvalid(413, "BODY_TOO_LARGE", f"At most {MAX_BODY_BYTES} bytes.")
            raw = self.rfile.read(length)
            self.consumed = True
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise RequestInvalid(400, "MALFORMED_REQUEST", f"The body is not JSON: {exc}") from None

    return Handler
