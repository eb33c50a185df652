"""The device side of protocol v2 (devices/PROTOCOL.md), in one place for the agent and the fleet simulator.

Sans-I/O: what to send and what an answer means, without doing the I/O. The agent drives it with
`ServerClient` below (httpx, blocking); the simulator drives the very same objects from its asyncio pools.
Neither re-implements enrollment, the check-in body, dropping the reports a 400 names, or reading and
verifying the per-slot desired state, so the two cannot drift apart.

    exchange = CheckinExchange(credential=..., models=..., installs=queue_a, metrics=queue_b, etag=...)
    while (answer := exchange.answer(*send(*exchange.request()))) is None:
        pass  # a 400 named some reports: they are dropped from the queues, the rest goes again at once
    for decision in plan_desired(answer.desired, key=..., device_id=..., slots=...):
        ...   # install / remove / confirm / refused / keep, one slot at a time
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from hotswap_device.manifest import ManifestRefused, PinnedKey, verify_manifest
from hotswap_device.protocol import (
    ACTION_INSTALL,
    ACTION_REMOVE,
    CHECKIN_PATH,
    ENROLL_PATH,
    MAX_ITEMS,
    MAX_MODELS,
    MAX_NAME_LENGTH,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_UNSUPPORTED,
)

logger = logging.getLogger(__name__)

USER_AGENT = f"hotswap-agent/{PROTOCOL_VERSION}"
# Attempts of one check-in: a 400 naming reports, or a 413, is answered by a smaller body sent at once.
MAX_ATTEMPTS = 4
_ITEM_FIELD = re.compile(r"^(installs|metrics)\[(\d+)\]")
_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class TransientError(Exception):
    """The server could not be reached or failed (network error, 5xx, 429): keep everything, try again later."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ApiError(Exception):
    """The server refused the request (4xx) in the API error format."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


def encode(body: dict[str, Any]) -> bytes:
    # NaN and ±Infinity go out as such: the server names the item holding one and the device drops exactly
    # it, where refusing to encode them would fail every check-in from then on.
    return json.dumps(body, separators=(",", ":")).encode()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def _refusal(status: int, headers: Mapping[str, str], content: bytes, path: str) -> Exception:
    """The exception an unsuccessful answer means: TransientError (5xx, 429) or ApiError."""
    if status >= 500 or status == 429:
        return TransientError(f"{path}: HTTP {status}", status=status, retry_after=_retry_after(headers))
    try:
        error = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return ApiError(status, str(error.get("code") or f"HTTP_{status}"),
                    str(error.get("message") or content[:200].decode("utf-8", "replace")),
                    error.get("details") if isinstance(error.get("details"), list) else [])


# --- enrollment ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    """A usable enrollment answer."""

    device_id: str
    credential: str
    checkin_url: str
    poll_interval_seconds: float | None
    key: PinnedKey
    key_info: dict[str, Any]


def enrollment_body(enrollment_key: str, device_id: str, *, capabilities: Mapping[str, Any], name: str = "",
                    device_type: str = "", region: str = "", tags: Sequence[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"enrollment_key": enrollment_key, "device_id": device_id,
                            "capabilities": dict(capabilities)}
    profile = {"name": name, "device_type": device_type, "region": region, "tags": list(tags)}
    body.update({key: value for key, value in profile.items() if value})
    return body


def enrollment_read(status: int, headers: Mapping[str, str], content: bytes) -> Enrollment:
    """The enrollment answer; ApiError when refused or unusable, TransientError when worth retrying."""
    if status not in (200, 201):
        raise _refusal(status, headers, content, ENROLL_PATH)
    try:
        answer = json.loads(content)
        key_info = answer["manifest_public_key"]
        poll = answer.get("poll_interval_seconds")
        return Enrollment(device_id=str(answer["device_id"]), credential=str(answer["credential"]),
                          checkin_url=str(answer.get("checkin_url") or CHECKIN_PATH),
                          poll_interval_seconds=float(poll) if isinstance(poll, (int, float)) else None,
                          key=PinnedKey.from_info(key_info), key_info=key_info)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ApiError(status, "ENROLLMENT_ANSWER_UNUSABLE", f"the enrollment answer is not usable: {exc}") from exc


# --- check-in ------------------------------------------------------------------------------------------------


def model_entry(model: str, version: str, sha256: str) -> dict[str, str]:
    """One entry of the check-in's `models` list: a model the device runs now."""
    return {"model": model, "version": version, "sha256": sha256}


@dataclass
class CheckinAnswer:
    """A 200 or 304 check-in answer. `desired` is None when a 200 carried no readable list (keep the old ETag)."""

    status: int
    etag: str | None
    traceparent: str = ""
    desired: list[Any] | None = field(default_factory=list)
    poll_interval_seconds: float | None = None
    body: dict[str, Any] | None = None


@dataclass
class DroppedItem:
    kind: str  # installs or metrics
    index: int
    item: dict[str, Any]
    reasons: list[str]


class CheckinExchange:
    """One check-in, over as many attempts as it takes: build the body, read the answer.

    `installs` and `metrics` are the device's queues (lists it owns): acknowledged reports are deleted from
    their head, and so are the ones a 400 names (each logged), after which the rest is sent again at once.
    """

    def __init__(
        self,
        *,
        credential: str,
        models: Sequence[Mapping[str, str]],
        installs: list[dict[str, Any]],
        metrics: list[dict[str, Any]],
        health: Mapping[str, Any] | None = None,
        etag: str | None = None,
        traceparent: str = "",
        limit: int = MAX_ITEMS,
        attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.credential = credential
        self.models = [dict(m) for m in models][:MAX_MODELS]
        self.installs, self.metrics = installs, metrics
        self.health = dict(health) if health is not None else None
        self.etag = etag
        self.traceparent = traceparent
        self.limit = limit
        self.attempts_left = attempts
        self.dropped: list[DroppedItem] = []
        self.sent_installs = self.sent_metrics = 0
        self.acknowledged_installs: list[dict[str, Any]] = []
        self._batch: tuple[int, int] = (0, 0)

    @property
    def dropped_fields(self) -> list[str]:
        return [f"{d.kind}[{d.index}]" for d in self.dropped]

    def request(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The next attempt's body and headers; TransientError once the attempts are used up."""
        if self.attempts_left <= 0:
            raise TransientError(f"the check-in was still refused after {MAX_ATTEMPTS} attempts")
        self.attempts_left -= 1
        installs, metrics = self.installs[: self.limit], self.metrics[: self.limit]
        self._batch = (len(installs), len(metrics))
        body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "models": self.models}
        if self.health is not None:
            body["health"] = self.health
        if installs:
            body["installs"] = installs
        if metrics:
            body["metrics"] = metrics
        headers = {"Authorization": f"Device {self.credential}", "Content-Type": "application/json"}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.traceparent:
            headers["traceparent"] = self.traceparent
        return body, headers

    def answer(self, status: int, headers: Mapping[str, str], content: bytes) -> CheckinAnswer | None:
        """The answer to the last request(); None means "send request() again". Raises ApiError, TransientError."""
        if status in (200, 304):
            # Acknowledged: the server stores reports with either answer.
            installs, metrics = self._batch
            self.acknowledged_installs += self.installs[:installs]
            del self.installs[:installs]
            del self.metrics[:metrics]
            self.sent_installs += installs
            self.sent_metrics += metrics
            return self._read(status, headers, content)
        error = _refusal(status, headers, content, CHECKIN_PATH)
        if isinstance(error, ApiError) and status == 413 and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            return None
        if isinstance(error, ApiError) and status == 400 and error.code != PROTOCOL_VERSION_UNSUPPORTED \
                and self._drop_named(error):
            return None
        if isinstance(error, ApiError) and error.code == PROTOCOL_VERSION_UNSUPPORTED:
            logger.error("the server does not speak device protocol %d: %s", PROTOCOL_VERSION, error.message)
        raise error

    def drop_batch(self) -> None:
        """Drops what the last request carried: for a client that will not resend a body the server refused."""
        installs, metrics = self._batch
        del self.installs[:installs]
        del self.metrics[:metrics]
        self._batch = (0, 0)

    def _read(self, status: int, headers: Mapping[str, str], content: bytes) -> CheckinAnswer:
        answer = CheckinAnswer(status, headers.get("ETag") or (self.etag if status == 304 else None),
                               headers.get("traceparent", ""))
        if status == 304:
            return answer
        try:
            body = json.loads(content)
        except ValueError as exc:
            raise TransientError(f"check-in answer is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise TransientError("check-in answer is not a JSON object")
        answer.body = body
        poll = body.get("poll_interval_seconds")
        if isinstance(poll, (int, float)) and not isinstance(poll, bool) and poll > 0:
            answer.poll_interval_seconds = float(poll)
        desired = body.get("desired")
        if isinstance(desired, list):
            answer.desired = desired
        else:
            logger.error("the check-in answer's desired is not a list (protocol %s?): acting on nothing",
                         body.get("protocol"))
            answer.desired = None
        return answer

    def _drop_named(self, error: ApiError) -> bool:
        """Removes the queued reports a 400 names; whether the next attempt differs from this one."""
        installs, metrics = self._batch
        sizes = {"installs": installs, "metrics": metrics}
        reasons: dict[tuple[str, int], list[str]] = {}
        fixed = False
        for detail in error.details:
            if not isinstance(detail, dict):
                continue
            where, message = str(detail.get("field") or ""), str(detail.get("message") or "")
            match = _ITEM_FIELD.match(where)
            if match and int(match.group(2)) < sizes[match.group(1)]:
                reasons.setdefault((match.group(1), int(match.group(2))), []).append(f"{where}: {message}")
            elif where.startswith("health") and self.health is not None:
                logger.warning("the server refused our health figures (%s: %s); sending the check-in without them",
                               where, message)
                self.health, fixed = None, True
            else:
                logger.error("the server refused the check-in for a reason no report explains: %s: %s",
                             where or "body", message)
        for (kind, index) in sorted(reasons, key=lambda k: (k[0], -k[1])):
            queue = self.installs if kind == "installs" else self.metrics
            # The batch is the head of the queue, so a batch index is a queue index; highest first.
            item = queue.pop(index)
            logger.warning("dropping %s[%d] %s: %s", kind, index, summary(item), "; ".join(reasons[(kind, index)]))
            self.dropped.append(DroppedItem(kind, index, item, reasons[(kind, index)]))
            fixed = True
        return fixed


# --- install reports -----------------------------------------------------------------------------------------


def _text(value: Any, fallback: str = "unknown") -> str:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH else fallback


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def install_report(manifest: Mapping[str, Any], status: str, *, version: str | None = None,
                   duration_ms: int | None = None, error: str = "", traceparent: str = "") -> dict[str, Any]:
    """An install report about one slot's manifest; `sequence` is that slot's. `version` overrides the
    manifest's (a removal names the version it removed)."""
    sequence = manifest.get("sequence")
    report: dict[str, Any] = {"model": _text(manifest.get("model")),
                              "version": _text(version if version is not None else manifest.get("version")),
                              "status": status, "at": now_iso(), "error": error[:2000]}
    if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence >= 0:
        report["sequence"] = sequence
    if duration_ms is not None:
        report["duration_ms"] = max(0, int(duration_ms))
    if _TRACEPARENT.match(traceparent or ""):
        report["traceparent"] = traceparent
    return report


def summary(item: Mapping[str, Any]) -> str:
    if "status" in item:
        return f"install report {item.get('model')} {item.get('version')} {item.get('status')}"
    return (f"metric window {item.get('model')} {item.get('version')} {item.get('window_start')}"
            f"..{item.get('window_end')} ({item.get('inference_count')} calls)")


# --- the desired state, slot by slot -----------------------------------------------------------------------


@dataclass
class SlotView:
    """What a device knows about one model slot, as plan_desired needs it."""

    running_version: str | None = None
    running_sha256: str | None = None
    running_sequence: int | None = None  # the sequence under which the running version was accepted
    last_sequence: int | None = None  # the highest sequence accepted for this model
    removed: bool = False  # removed (and reported) at last_sequence
    rejected: dict[str, Any] | None = None  # the last refused or failed manifest (reported once)


INSTALL, REMOVE, CONFIRM, KEEP, REFUSED = "install", "remove", "confirm", "keep", "refused"


@dataclass
class Decision:
    """What to do about one slot of the answer: install, remove, confirm (runs it; report `active` under the
    new sequence), keep (nothing to do), refused (report it unless `reported` already)."""

    model: str
    kind: str
    manifest: dict[str, Any]
    code: str = ""
    error: str = ""
    reported: bool = False

    @property
    def rejection(self) -> dict[str, Any]:
        return rejection_key(self.manifest, self.code)


def rejection_key(manifest: Mapping[str, Any], code: str) -> dict[str, Any]:
    """Identifies a refused or failed manifest, so its re-issued copies (fresh URL) are not reported again."""
    return {"sequence": manifest.get("sequence"), "model": manifest.get("model"),
            "version": manifest.get("version"), "sha256": manifest.get("sha256"), "code": code}


def _raw_manifest(entry: Any) -> dict[str, Any]:
    raw = entry.get("manifest") if isinstance(entry, dict) else None
    return raw if isinstance(raw, dict) else {}


def plan_desired(
    desired: Sequence[Any],
    *,
    key: PinnedKey,
    device_id: str,
    slots: Mapping[str, SlotView],
    now: datetime | None = None,
) -> list[Decision]:
    """One decision per entry of the answer's `desired` list, each slot verified on its own.

    A refusal of one slot (bad signature, lower sequence, downgrade, too many models...) never blocks
    another. A model the device runs that has no entry is kept as it is (no decision).
    """
    decisions: list[Decision] = []
    seen: set[str] = set()
    running = sum(1 for view in slots.values() if view.running_version)
    for entry in desired:
        raw = _raw_manifest(entry)
        model = raw.get("model") if isinstance(raw.get("model"), str) else ""
        view = slots.get(model) or SlotView()
        try:
            if model in seen:
                raise ManifestRefused("duplicate_model", f"The answer holds a second manifest for {model}.")
            manifest = verify_manifest(
                entry, key=key, device_id=device_id, last_sequence=view.last_sequence,
                running=(model, view.running_version) if view.running_version else None, now=now)
            seen.add(model)
            if manifest["action"] == ACTION_INSTALL and not view.running_version and running >= MAX_MODELS:
                raise ManifestRefused("too_many_models",
                                      f"This device already runs {running} models, the most it may run.")
        except ManifestRefused as refusal:
            decision = Decision(model or "unknown", REFUSED, raw, refusal.code, str(refusal))
            decision.reported = view.rejected == decision.rejection
            decisions.append(decision)
            continue
        decisions.append(Decision(model, _kind(manifest, view), manifest))
        if decisions[-1].kind == INSTALL and not view.running_version:
            running += 1
    return decisions


def _kind(manifest: dict[str, Any], view: SlotView) -> str:
    if manifest["action"] == ACTION_REMOVE:
        gone = view.running_version is None and view.removed and view.last_sequence == manifest["sequence"]
        return KEEP if gone else REMOVE
    if (view.running_version, view.running_sha256) == (manifest["version"], manifest["sha256"]):
        return KEEP if view.running_sequence == manifest["sequence"] else CONFIRM
    return INSTALL


# --- blocking transport (the agent) -------------------------------------------------------------------------


class ServerClient:
    """One keep-alive connection pool to the server for API calls; downloads use `download_client`."""

    def __init__(self, server: str, *, transport: httpx.BaseTransport | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, transport=transport, timeout=timeout,
                                 headers={"User-Agent": USER_AGENT})
        # Separate client without base headers: presigned S3 URLs refuse a request that also carries
        # an Authorization header, and a redirect must not leak the device credential.
        self.download_client = httpx.Client(base_url=self.server, transport=transport, follow_redirects=True,
                                            timeout=httpx.Timeout(timeout, read=60.0),
                                            headers={"User-Agent": USER_AGENT})

    def _post(self, path: str, body: dict[str, Any], headers: Mapping[str, str]) -> httpx.Response:
        try:
            return self.http.post(path, content=encode(body), headers={"Content-Type": "application/json", **headers})
        except httpx.TransportError as exc:
            raise TransientError(f"{path}: {type(exc).__name__}: {exc}") from exc

    def enroll(self, body: dict[str, Any]) -> Enrollment:
        response = self._post(ENROLL_PATH, body, {})
        return enrollment_read(response.status_code, response.headers, response.content)

    def checkin(self, exchange: CheckinExchange, *, path: str = CHECKIN_PATH) -> CheckinAnswer:
        while True:
            body, headers = exchange.request()
            response = self._post(path, body, headers)
            answer = exchange.answer(response.status_code, response.headers, response.content)
            if answer is not None:
                return answer

    def close(self) -> None:
        self.http.close()
        self.download_client.close()
