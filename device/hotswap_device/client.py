"""HTTP calls to the HotSwap server: enrollment and check-in (devices/PROTOCOL.md §1-3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

USER_AGENT = "hotswap-agent/1"


class TransientError(Exception):
    """The server could not be reached or failed (network error, 5xx): keep everything and try again later."""


class ApiError(Exception):
    """The server refused the request (4xx) in the API error format."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


@dataclass
class CheckinAnswer:
    """A 200 or 304 check-in answer."""

    status: int
    body: dict[str, Any] | None
    etag: str | None
    traceparent: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    return ApiError(
        response.status_code,
        str(error.get("code") or f"HTTP_{response.status_code}"),
        str(error.get("message") or response.text[:200]),
        error.get("details") if isinstance(error.get("details"), list) else [],
    )


class ServerClient:
    """One keep-alive connection pool to the server for API calls; downloads use `download_client`."""

    def __init__(
        self,
        server: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, transport=transport, timeout=timeout,
                                 headers={"User-Agent": USER_AGENT})
        # Separate client without base headers: presigned S3 URLs refuse a request that also carries
        # an Authorization header, and a redirect must not leak the device credential.
        self.download_client = httpx.Client(base_url=self.server, transport=transport, follow_redirects=True,
                                            timeout=httpx.Timeout(timeout, read=60.0),
                                            headers={"User-Agent": USER_AGENT})

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        # NaN and ±Infinity go out as such: the server names the item holding one (PROTOCOL §3) and the
        # agent drops exactly it, where refusing to encode them would fail every check-in from then on.
        content = json.dumps(body, separators=(",", ":")).encode()
        try:
            response = self.http.post(path, content=content, headers={"Content-Type": "application/json", **headers})
        except httpx.TransportError as exc:
            raise TransientError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"{path}: HTTP {response.status_code}")
        return response

    def enroll(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self._post("/api/v1/devices/enroll", body, {})
        if response.status_code != 201 and response.status_code != 200:
            raise _api_error(response)
        return response.json()

    def checkin(
        self,
        *,
        path: str,
        credential: str,
        body: dict[str, Any],
        etag: str | None = None,
    ) -> CheckinAnswer:
        headers = {"Authorization": f"Device {credential}"}
        if etag:
            headers["If-None-Match"] = etag
        response = self._post(path, body, headers)
        if response.status_code == 304:
            return CheckinAnswer(304, None, response.headers.get("ETag") or etag,
                                 response.headers.get("traceparent", ""), dict(response.headers))
        if response.status_code != 200:
            raise _api_error(response)
        try:
            answer = response.json()
        except ValueError as exc:
            raise TransientError(f"check-in answer is not JSON: {exc}") from exc
        return CheckinAnswer(200, answer, response.headers.get("ETag"), response.headers.get("traceparent", ""),
                             dict(response.headers))

    def close(self) -> None:
        self.http.close()
        self.download_client.close()
