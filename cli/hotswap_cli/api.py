"""HotSwap's HTTP API as the CLI calls it: auth header, JWT renewal, errors as ApiError with the API's code."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from hotswap_cli.config import Profile, profile_save

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# A 429 names its wait (Retry-After); the CLI waits up to this long in all before giving up.
RATE_LIMIT_PATIENCE_SECONDS = 120
TRANSPORT_ATTEMPTS = 3


@dataclass
class ApiError(Exception):
    """What the API answered in its error shape (or what stood in the way of an answer: UNREACHABLE)."""

    code: str
    message: str
    status: int = 0
    details: list[dict] = field(default_factory=list)
    body: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            text = response.text.strip()[:300] or response.reason_phrase
            return cls(code=f"HTTP_{response.status_code}", message=text, status=response.status_code,
                       body={"error": {"code": f"HTTP_{response.status_code}", "message": text, "details": []}})
        return cls(code=str(error.get("code", f"HTTP_{response.status_code}")), message=str(error.get("message", "")),
                   status=response.status_code, details=list(error.get("details") or []), body=body)


def unreachable(url: str, exc: Exception) -> ApiError:
    message = f"{url} could not be reached: {exc or type(exc).__name__}"
    return ApiError(code="UNREACHABLE", message=message,
                    body={"error": {"code": "UNREACHABLE", "message": message, "details": []}})


class Api:
    """One server, one caller; `request` answers the JSON body or raises ApiError."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self._renewing = threading.Lock()  # parts are sent from several threads; a refresh token works once
        # gunicorn closes a kept-alive connection after 2 s idle (its default): reusing one only within 1 s avoids
        # writing into a connection it is closing.
        self.http = httpx.Client(base_url=f"{profile.url}/api/v1", timeout=TIMEOUT,
                                 limits=httpx.Limits(keepalive_expiry=1.0))

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                renewed: bool = False, idempotent: bool = False, **kwargs) -> Any:
        """The answer's JSON; ApiError otherwise. `idempotent`: a POST that may be sent again after a transport
        failure (GETs always may)."""
        token = self.profile.token
        response = self.send(method, path, json=json, params=params, idempotent=idempotent, **kwargs)
        if response.status_code == 401 and self.profile.refresh and not renewed:
            with self._renewing:
                if self.profile.token == token:  # else another thread renewed it meanwhile
                    self._renew()
            return self.request(method, path, json=json, params=params, renewed=True, idempotent=idempotent,
                                **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response.json() if response.content else None

    def send(self, method: str, path: str, *, idempotent: bool = False, **kwargs) -> httpx.Response:
        """The raw response, after waiting out 429s (their Retry-After) for up to RATE_LIMIT_PATIENCE_SECONDS and
        retrying transport failures of requests that may be sent twice."""
        deadline = time.monotonic() + RATE_LIMIT_PATIENCE_SECONDS
        headers = {"Authorization": self.profile.authorization, **kwargs.pop("headers", {})}
        failures = 0
        while True:
            try:
                response = self.http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                failures += 1
                # A kept-alive connection the server closed as it was reused (no answer: the request was not
                # handled), or any failure of a read: worth another attempt. A streamed body cannot be resent.
                stale = isinstance(exc, httpx.RemoteProtocolError) and "content" not in kwargs
                if failures >= TRANSPORT_ATTEMPTS or not (stale or idempotent or method == "GET"):
                    raise unreachable(self.profile.url, exc) from exc
                time.sleep(0.5 * failures)
                continue
            wait = _retry_after(response)
            if response.status_code != 429 or wait is None or time.monotonic() + wait > deadline:
                return response
            time.sleep(wait)

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v not in (None, (), [])})

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def _renew(self) -> None:
        """A fresh JWT pair from the refresh token; written back to the profile (each refresh token works once)."""
        try:
            response = self.http.post("/auth/token/refresh", json={"refresh": self.profile.refresh})
        except httpx.HTTPError as exc:
            raise unreachable(self.profile.url, exc) from exc
        if response.status_code != 200:
            error = ApiError.from_response(response)
            error.message += " (the saved login has expired: run `hotswap login` again)"
            raise error
        tokens = response.json()
        self.profile.token, self.profile.refresh = tokens["access"], tokens.get("refresh", self.profile.refresh)
        if self.profile.saved:
            profile_save(self.profile)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.5)
    except ValueError:
        return None
