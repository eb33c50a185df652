"""The fleet simulator against an in-process fake of the device API (httpx MockTransport): no server needed.

The fake validates every check-in body with the real server's parser, so a simulated body the server
would reject fails here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from devices.services import checkin
from devices.services.checkin import CheckinInvalid, checkin_parse
from hotswap_device.fleet import parse_behaviours
from hotswap_device.manifest import canonical_bytes
from hotswap_device.simulator import FleetConfig, run_fleet

ENROLL_KEY = "hse_0a1b2c3d_fleet-secret"
BASE = "http://fake.hotswap"


def _error(status: int, code: str, message: str = "", details=None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "details": details or []}})


class FakeServer:
    """Enroll, check-in with ETag/304 and signed manifests, artifact downloads: the protocol, nothing more."""

    def __init__(self, *, poll: float = 0.2):
        self.poll = poll
        self.signing_key = Ed25519PrivateKey.generate()
        raw = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_info = {"key_id": "fake-key", "algorithm": "ed25519", "public_key": base64.b64encode(raw).decode()}
        self.devices: dict[str, dict] = {}
        self.credentials: dict[str, str] = {}
        self.artifacts: dict[str, bytes] = {}
        self.installs: list[tuple[str, dict]] = []
        self.metrics: list[tuple[str, dict]] = []
        self.answers: Counter = Counter()
        self.enrollments = 0
        self.enroll_limit: int | None = None  # enrollments per second before 429s
        self.enroll_times: list[float] = []
        self.decommissioned: set[str] = set()
        self.checkins: Counter = Counter()  # per device

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/api/v1/devices/manifest-key":
            return httpx.Response(200, json=self.key_info)
        if path == "/api/v1/devices/enroll" and request.method == "POST":
            if self.enroll_limit is not None:
                now = time.monotonic()
                self.enroll_times = [t for t in self.enroll_times if t > now - 1]
                if len(self.enroll_times) >= self.enroll_limit:
                    self.answers["enroll 429"] += 1
                    return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": {"code": "THROTTLED"}})
                self.enroll_times.append(now)
            return self._enroll(json.loads(request.content))
        if path == "/api/v1/devices/checkin" and request.method == "POST":
            response = self._checkin(request)
            self.answers[response.status_code] += 1
            return response
        if path.startswith("/artifacts/"):
            content = self.artifacts.get(path.rsplit("/", 1)[1])
            return httpx.Response(200, content=content) if content is not None else httpx.Response(404)
        return httpx.Response(404)

    def _enroll(self, body: dict) -> httpx.Response:
        if body.get("enrollment_key") != ENROLL_KEY:
            return _error(403, "ENROLLMENT_KEY_INVALID")
        device_id = body["device_id"]
        if device_id in self.devices:
            return _error(409, "DEVICE_EXISTS")
        assert set(body) == {"enrollment_key", "device_id", "name", "device_type", "region", "tags", "capabilities"}
        assert set(body["capabilities"]) == {"cpu_cores", "memory_mb", "storage_gb", "gpu"}
        credential = f"hsd_{secrets.token_hex(4)}_{secrets.token_urlsafe(16)}"
        self.credentials[credential] = device_id
        self.devices[device_id] = {"spec": body, "sequence": 0, "desired": None}
        self.enrollments += 1
        return httpx.Response(201, json={"device_id": device_id, "credential": credential,
                                         "checkin_url": "/api/v1/devices/checkin", "poll_interval_seconds": self.poll,
                                         "manifest_public_key": self.key_info})

    def register(self, device_id: str) -> str:
        """An operator pre-registers a device and issues its credential."""
        credential = f"hsd_{secrets.token_hex(4)}_{secrets.token_urlsafe(16)}"
        self.credentials[credential] = device_id
        self.devices[device_id] = {"spec": None, "sequence": 0, "desired": None}
        return credential

    def _checkin(self, request: httpx.Request) -> httpx.Response:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        device_id = self.credentials.get(credential) if scheme == "Device" else None
        if device_id is None:
            return _error(401, "DEVICE_CREDENTIAL_INVALID")
        self.checkins[device_id] += 1
        if device_id in self.decommissioned:
            return _error(403, "DEVICE_DECOMMISSIONED")
        now = datetime.now(UTC)
        try:
            checkin_parse(request.content, now=now)  # the real server's validation, all or nothing
        except CheckinInvalid as exc:
            return _error(400, exc.code, exc.message, exc.details)
        body = json.loads(request.content)
        self.installs += [(device_id, item) for item in body.get("installs", [])]
        self.metrics += [(device_id, item) for item in body.get("metrics", [])]
        device = self.devices[device_id]
        device["running"] = body.get("running")
        etag = f'"{device["sequence"]}"'
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(200, headers={"ETag": etag, "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
                              json={"desired": self._desired(device_id, now), "poll_interval_seconds": self.poll,
                                    "accepted": {}, "server_time": now.isoformat()})

    def set_desired(self, device_ids, *, model: str, version: str, content: bytes, rollback: bool = False,
                    tamper: str = "", served: bytes | None = None) -> None:
        sha256 = hashlib.sha256(content).hexdigest()
        self.artifacts[sha256] = content if served is None else served
        checkin._known_versions.put(f"{model}-{version}", True)  # in the registry the real validation consults
        for device_id in device_ids:
            device = self.devices[device_id]
            device["sequence"] += 1
            device["desired"] = {"model": model, "version": version, "sha256": sha256, "size": len(content),
                                 "url": f"{BASE}/artifacts/{sha256}", "rollback": rollback, "tamper": tamper}

    def _desired(self, device_id: str, now: datetime) -> dict | None:
        device = self.devices[device_id]
        desired = device["desired"]
        if desired is None:
            return None
        manifest = {"device_id": device_id, "format": "onnx", "issued_at": now.isoformat(),
                    "expires_at": (now + timedelta(minutes=10)).isoformat(), "sequence": device["sequence"],
                    **{k: v for k, v in desired.items() if k != "tamper"}}
        signature = self.signing_key.sign(canonical_bytes(manifest))
        if desired["tamper"] == "signature":
            manifest = {**manifest, "size": manifest["size"] + 1}
        return {"manifest": manifest, "signature": base64.b64encode(signature).decode(),
                "key_id": self.key_info["key_id"]}

    def installs_of(self, status: str, version: str | None = None) -> dict[str, dict]:
        return {device_id: item for device_id, item in self.installs
                if item["status"] == status and (version is None or item["version"] == version)}


def config(server: FakeServer, tmp_path, **overrides) -> FleetConfig:
    values = {"server": BASE, "enroll_key": ENROLL_KEY, "devices": 12, "prefix": "t-", "duration": 1.5,
              "state_file": tmp_path / "state.json", "download_seconds": 0.05, "seed": 7,
              "transport": server.transport()}
    return FleetConfig(**{**values, **overrides})


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _with_fleet(fleet_config: FleetConfig, steps):
    """Runs the fleet and, alongside it, `steps` (acting as the operator); returns the stats."""
    fleet_config.duration = 15  # a safety net: the steps end the run
    stop = asyncio.Event()
    task = asyncio.create_task(run_fleet(fleet_config, stop=stop))
    try:
        await steps()
    finally:
        stop.set()
    return await task


def test_it_enrolls_checks_in_with_etags_and_reuses_cached_credentials(tmp_path):
    server = FakeServer()

    stats = asyncio.run(run_fleet(config(server, tmp_path)))

    assert stats.fatal == ""
    assert (stats.enrolled, stats.enrolled_now, stats.checked_in_devices) == (12, 12, 12)
    assert stats.errors == Counter()
    assert server.answers[400] == 0
    assert stats.not_modified > 0 and server.answers[304] == stats.not_modified
    assert {d["spec"]["region"] for d in server.devices.values()} == {"eu-west", "us-east", "ap-south"}
    saved = json.loads((tmp_path / "state.json").read_text())["servers"][BASE]
    assert sorted(saved) == [f"t-{i:05d}" for i in range(1, 13)]

    again = asyncio.run(run_fleet(config(server, tmp_path, duration=0.8)))

    assert (again.enrolled, again.enrolled_now) == (12, 0)
    assert server.enrollments == 12
    assert again.checked_in_devices == 12


def test_it_installs_the_desired_version_and_reports_metrics_from_its_behaviour(tmp_path):
    server = FakeServer()
    behaviours = parse_behaviours(["resnet-1.1.0=latency:40±5,errors:0.02,accuracy:0.85"])
    fleet_config = config(server, tmp_path, behaviours=behaviours, inference_rate=200)

    async def steps():
        await _until(lambda: len(server.devices) == 12)
        server.set_desired(server.devices, model="resnet", version="1.1.0", content=b"model-bytes")
        await _until(lambda: len({d for d, w in server.metrics if w["version"] == "1.1.0"}) == 12)

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    assert stats.versions == Counter({"resnet-1.1.0": 12})
    assert set(server.installs_of("installed")) == set(server.installs_of("active")) == set(server.devices)
    active = server.installs_of("active")["t-00001"]
    assert active["sequence"] == 1 and active["traceparent"].startswith("00-abab")
    windows = [w for _, w in server.metrics if w["version"] == "1.1.0"]
    p50s = sorted(w["latency_ms"]["p50"] for w in windows)
    assert 37 <= p50s[len(p50s) // 2] <= 43
    assert all(w["latency_ms"]["p50"] <= w["latency_ms"]["p95"] <= w["latency_ms"]["p99"] for w in windows)
    assert all(sum(w["latency_histogram"]) == w["inference_count"] for w in windows)
    labelled = sum(w["labelled_count"] for w in windows)
    assert 0.78 <= sum(w["accuracy"] * w["labelled_count"] for w in windows) / labelled <= 0.92
    errors, count = sum(w["error_count"] for w in windows), sum(w["inference_count"] for w in windows)
    assert 0.005 < errors / count < 0.05


def test_it_refuses_downgrades_and_bad_signatures_and_accepts_rollbacks(tmp_path):
    server = FakeServer()
    fleet_config = config(server, tmp_path, devices=4)
    ids = lambda: sorted(server.devices)  # noqa: E731

    async def steps():
        await _until(lambda: len(server.devices) == 4)
        server.set_desired(ids(), model="resnet", version="1.1.0", content=b"v110")
        await _until(lambda: len(server.installs_of("active", "1.1.0")) == 4)
        server.set_desired(ids()[:2], model="resnet", version="1.0.0", content=b"v100")
        server.set_desired(ids()[2:], model="resnet", version="1.2.0", content=b"v120", tamper="signature")
        await _until(lambda: len(server.installs_of("refused")) == 4)
        server.set_desired(ids()[:2], model="resnet", version="1.0.0", content=b"v100", rollback=True)
        await _until(lambda: len(server.installs_of("active", "1.0.0")) == 2)

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    refused = server.installs_of("refused")
    assert {refused[d]["version"] for d in ids()[:2]} == {"1.0.0"}
    assert "older than the running 1.1.0" in refused[ids()[0]]["error"]
    assert "signature" in refused[ids()[3]]["error"]
    assert stats.refusals == Counter({"downgrade": 2, "bad_signature": 2})
    assert stats.versions == Counter({"resnet-1.0.0": 2, "resnet-1.1.0": 2})
    # A refusal is reported once, not at every check-in.
    assert len([1 for _, item in server.installs if item["status"] == "refused"]) == 4


def test_it_downloads_for_real_and_reports_a_checksum_mismatch(tmp_path):
    server = FakeServer()
    fleet_config = config(server, tmp_path, devices=2, download=True)

    async def steps():
        await _until(lambda: len(server.devices) == 2)
        first, second = sorted(server.devices)
        server.set_desired([first], model="resnet", version="1.1.0", content=b"genuine")
        server.set_desired([second], model="resnet", version="1.1.0", content=b"genuine!", served=b"tampered")
        await _until(lambda: server.installs_of("active") and server.installs_of("failed"))

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    assert list(server.installs_of("active")) == ["t-00001"]
    assert "sha256 mismatch" in server.installs_of("failed")["t-00002"]["error"]
    assert stats.versions == Counter({"resnet-1.1.0": 1, "none": 1})


def test_it_stops_at_once_on_an_invalid_enrollment_key(tmp_path):
    server = FakeServer()
    started = time.monotonic()

    stats = asyncio.run(run_fleet(config(server, tmp_path, enroll_key="hse_00000000_wrong", duration=30)))

    assert "enrollment key" in stats.fatal
    assert time.monotonic() - started < 5
    assert server.devices == {}


def test_a_decommissioned_device_stops_checking_in_and_does_not_re_enroll(tmp_path):
    server = FakeServer(poll=0.1)
    server.decommissioned = {"t-00003", "t-00007"}

    stats = asyncio.run(run_fleet(config(server, tmp_path, duration=1.5)))

    assert server.enrollments == 12
    assert server.checkins["t-00003"] == server.checkins["t-00007"] == 1
    assert min(server.checkins[d] for d in server.devices if d not in server.decommissioned) > 1
    assert stats.checkins > 0


def test_it_stops_promptly_when_asked_even_with_a_long_poll_interval(tmp_path):
    server = FakeServer(poll=600)

    async def steps():
        await _until(lambda: len(server.devices) == 12)

    started = time.monotonic()
    stats = asyncio.run(_with_fleet(config(server, tmp_path, duration=None), steps))

    assert time.monotonic() - started < 5
    assert stats.enrolled == 12


def test_it_drops_only_the_windows_a_400_names_and_resends_the_rest(tmp_path, monkeypatch):
    server = FakeServer()
    original = server._checkin
    rejected: list[dict] = []

    def reject_first_window(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if not rejected and len(body.get("metrics", [])) >= 1:
            rejected.append(body["metrics"][0])
            return _error(400, "VALIDATION_ERROR", "bad window",
                          [{"field": "metrics[0].latency_ms.p99", "message": "Too large."}])
        return original(request)

    monkeypatch.setattr(server, "_checkin", reject_first_window)
    fleet_config = config(server, tmp_path, devices=1)

    async def steps():
        await _until(lambda: len(server.devices) == 1)
        server.set_desired(server.devices, model="resnet", version="1.1.0", content=b"m")
        await _until(lambda: rejected and len(server.metrics) >= 2)

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    assert rejected[0] not in [w for _, w in server.metrics]
    assert sum(n for kind, n in stats.errors.items() if kind.startswith("checkin: 400")) == 1


@pytest.mark.parametrize("poll", [0.2])
def test_it_caps_the_server_interval_with_max_poll_seconds(tmp_path, poll):
    server = FakeServer(poll=60)

    stats = asyncio.run(run_fleet(config(server, tmp_path, devices=3, max_poll_seconds=poll, duration=1.2)))

    assert stats.checkins >= 3 * 3


def test_it_waits_out_an_enrollment_throttle_as_one_fleet(tmp_path):
    server = FakeServer()
    server.enroll_limit = 5

    stats = asyncio.run(run_fleet(config(server, tmp_path, duration=4)))

    assert stats.enrolled == 12 and stats.checked_in_devices == 12, stats.summary()
    assert stats.enroll_throttled >= 1 and stats.errors == Counter()
    # The fleet stops knocking during Retry-After: a 429 or two per wave, not one per device per retry.
    assert server.answers["enroll 429"] <= 3 * 10


def test_devices_with_operator_issued_credentials_skip_enrollment_and_pin_the_published_key(tmp_path):
    server = FakeServer()
    credentials = {f"t-{i:05d}": server.register(f"t-{i:05d}") for i in range(1, 4)}
    fleet_config = config(server, tmp_path, devices=3, enroll_key="", credentials=credentials, poll_seconds=0.2)

    async def steps():
        await _until(lambda: server.answers[200] >= 3)
        server.set_desired(server.devices, model="resnet", version="1.1.0", content=b"m")
        await _until(lambda: len(server.installs_of("active")) == 3)

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    assert server.enrollments == 0 and stats.enrolled_now == 0
    assert stats.versions == Counter({"resnet-1.1.0": 3}) and not stats.refusals
    saved = json.loads((tmp_path / "state.json").read_text())["servers"][BASE]
    assert saved["t-00001"]["credential"] == credentials["t-00001"]
    assert saved["t-00001"]["public_key"] == server.key_info["public_key"]
