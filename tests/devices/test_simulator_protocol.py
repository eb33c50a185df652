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
from hotswap_device.protocol import PROTOCOL_VERSION
from hotswap_device.simulator import FleetConfig, run_fleet
from tests.device.fakeserver import protocol_problems

ENROLL_KEY = "hse_0a1b2c3d_fleet-secret"
BASE = "http://fake.hotswap"


def _error(status: int, code: str, message: str = "", details=None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "details": details or []}})


class FakeServer:
    """Enroll, check-in with ETag/304 and signed per-slot manifests, artifact downloads: protocol v2, nothing more."""

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
        self.devices[device_id] = {"spec": body, "sequences": {}, "desired": {}}
        self.enrollments += 1
        return httpx.Response(201, json={"protocol": PROTOCOL_VERSION, "device_id": device_id, "credential": credential,
                                         "checkin_url": "/api/v1/devices/checkin", "poll_interval_seconds": self.poll,
                                         "manifest_public_key": self.key_info})

    def register(self, device_id: str) -> str:
        """An operator pre-registers a device and issues its credential."""
        credential = f"hsd_{secrets.token_hex(4)}_{secrets.token_urlsafe(16)}"
        self.credentials[credential] = device_id
        self.devices[device_id] = {"spec": None, "sequences": {}, "desired": {}}
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
        body = json.loads(request.content)
        code, details = protocol_problems(body)
        if code:
            return _error(400, code, "This server speaks device protocol 2.", details)
        try:
            # The real server's validation, all or nothing: reports name a model the device was offered (a slot)
            # or one it says it runs.
            checkin_parse(request.content, now=now, slot_models=frozenset(self.devices[device_id]["desired"]))
        except CheckinInvalid as exc:
            return _error(400, exc.code, exc.message, exc.details)
        self.installs += [(device_id, item) for item in body.get("installs", [])]
        self.metrics += [(device_id, item) for item in body.get("metrics", [])]
        device = self.devices[device_id]
        device["models"] = body["models"]
        # One ETag over the device's whole desired set.
        etag = f'"{sorted(device["sequences"].items())}"'.replace(" ", "")
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(200, headers={"ETag": etag, "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
                              json={"protocol": PROTOCOL_VERSION, "desired": self._desired(device_id, now),
                                    "poll_interval_seconds": self.poll, "accepted": {},
                                    "server_time": now.isoformat()})

    def set_desired(self, device_ids, *, model: str, version: str, content: bytes, rollback: bool = False,
                    tamper: str = "", served: bytes | None = None) -> None:
        sha256 = hashlib.sha256(content).hexdigest()
        self.artifacts[sha256] = content if served is None else served
        checkin._known_versions.put(f"{model}-{version}", True)  # in the registry the real validation consults
        for device_id in device_ids:
            self._slot(device_id, model, {"action": "install", "version": version, "sha256": sha256,
                                          "size": len(content), "url": f"{BASE}/artifacts/{sha256}",
                                          "format": "onnx", "rollback": rollback, "tamper": tamper})

    def remove(self, device_ids, *, model: str) -> None:
        for device_id in device_ids:
            self._slot(device_id, model, {"action": "remove", "tamper": ""})

    def _slot(self, device_id: str, model: str, desired: dict) -> None:
        device = self.devices[device_id]
        device["sequences"][model] = device["sequences"].get(model, 0) + 1
        device["desired"][model] = {"model": model, **desired}

    def _desired(self, device_id: str, now: datetime) -> list[dict]:
        device, answer = self.devices[device_id], []
        for model, desired in device["desired"].items():
            manifest = {"device_id": device_id, "issued_at": now.isoformat(),
                        "expires_at": (now + timedelta(minutes=10)).isoformat(),
                        "sequence": device["sequences"][model], **{k: v for k, v in desired.items() if k != "tamper"}}
            signature = self.signing_key.sign(canonical_bytes(manifest))
            if desired["tamper"] == "signature":
                manifest = {**manifest, "size": manifest["size"] + 1}
            answer.append({"manifest": manifest, "signature": base64.b64encode(signature).decode(),
                           "key_id": self.key_info["key_id"]})
        return answer

    def installs_of(self, status: str, version: str | None = None, model: str | None = None) -> dict[str, dict]:
        return {device_id: item for device_id, item in self.installs
                if item["status"] == status and (version is None or item["version"] == version)
                and (model is None or item["model"] == model)}


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


# --- several models per virtual device -------------------------------------------------------------------------


def test_each_device_runs_two_models_with_their_own_behaviour_and_swaps_one_while_the_other_serves(tmp_path):
    server = FakeServer()
    behaviours = parse_behaviours(["detector=latency:40±2", "classifier-1.0.0=latency:10±1",
                                   "classifier-1.1.0=latency:25±1,errors:0"])
    fleet_config = config(server, tmp_path, devices=4, behaviours=behaviours, inference_rate=200)
    ids = lambda: sorted(server.devices)  # noqa: E731

    async def steps():
        await _until(lambda: len(server.devices) == 4)
        server.set_desired(ids(), model="detector", version="1.0.0", content=b"detector")
        server.set_desired(ids(), model="classifier", version="1.0.0", content=b"classifier")
        await _until(lambda: len(server.installs_of("active")) == 4
                     and all(len(server.devices[d].get("models", [])) == 2 for d in ids()))
        await _until(lambda: {d for d, w in server.metrics if w["model"] == "classifier"} == set(ids()))
        server.set_desired(ids(), model="classifier", version="1.1.0", content=b"classifier 1.1")
        await _until(lambda: len(server.installs_of("active", "1.1.0")) == 4)
        await _until(lambda: {d for d, w in server.metrics if w["version"] == "1.1.0"} == set(ids()))

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    assert stats.versions == Counter({"detector-1.0.0": 4, "classifier-1.1.0": 4})
    assert all(sorted(m["model"] for m in server.devices[d]["models"]) == ["classifier", "detector"] for d in ids())
    # The detector was installed once per device and never touched by the classifier's upgrade.
    detector = [item for _, item in server.installs if item["model"] == "detector"]
    assert Counter(item["status"] for item in detector) == Counter({"installed": 4, "active": 4})
    assert {item["sequence"] for _, item in server.installs if item["version"] == "1.1.0"} == {2}  # its slot's
    p50 = {}
    for _, window in server.metrics:
        p50.setdefault((window["model"], window["version"]), []).append(window["latency_ms"]["p50"])
    median = {key: sorted(values)[len(values) // 2] for key, values in p50.items()}
    assert 37 <= median[("detector", "1.0.0")] <= 43
    assert 8 <= median[("classifier", "1.0.0")] <= 12 and 22 <= median[("classifier", "1.1.0")] <= 28


def test_a_refused_slot_does_not_block_the_other_and_a_removed_one_is_reported(tmp_path):
    server = FakeServer()
    fleet_config = config(server, tmp_path, devices=2)
    ids = lambda: sorted(server.devices)  # noqa: E731

    async def steps():
        await _until(lambda: len(server.devices) == 2)
        server.set_desired(ids(), model="detector", version="1.1.0", content=b"d110")
        await _until(lambda: len(server.installs_of("active", model="detector")) == 2)
        # In one answer: a downgrade of the detector (not a rollback) and a new classifier.
        server.set_desired(ids(), model="detector", version="1.0.0", content=b"d100")
        server.set_desired(ids(), model="classifier", version="2.0.0", content=b"c200")
        await _until(lambda: len(server.installs_of("active", model="classifier")) == 2
                     and len(server.installs_of("refused")) == 2)
        server.remove(ids()[:1], model="classifier")
        await _until(lambda: len(server.installs_of("removed")) == 1)

    stats = asyncio.run(_with_fleet(fleet_config, steps))

    assert stats.versions == Counter({"detector-1.1.0": 2, "classifier-2.0.0": 1})
    assert stats.refusals == Counter({"downgrade": 2})
    removed = server.installs_of("removed")[ids()[0]]
    assert (removed["model"], removed["version"], removed["sequence"]) == ("classifier", "2.0.0", 2)
    assert [m["model"] for m in server.devices[ids()[0]]["models"]] == ["detector"]


def test_a_state_file_of_protocol_1_becomes_each_device_s_slot(tmp_path):
    server = FakeServer()
    credential = server.register("t-00001")
    sha256 = hashlib.sha256(b"old").hexdigest()
    checkin._known_versions.put("resnet-1.0.0", True)  # in the registry the real validation consults
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "servers": {BASE: {"t-00001": {
        "credential": credential, "key_id": "fake-key", "public_key": server.key_info["public_key"],
        "running": {"model": "resnet", "version": "1.0.0", "sha256": sha256}, "last_sequence": 3, "poll": 0.2}}}}))

    stats = asyncio.run(run_fleet(config(server, tmp_path, devices=1, enroll_key="", duration=0.8)))

    assert stats.versions == Counter({"resnet-1.0.0": 1}) and stats.errors == Counter()
    assert server.devices["t-00001"]["models"] == [{"model": "resnet", "version": "1.0.0", "sha256": sha256}]
    saved = json.loads((tmp_path / "state.json").read_text())["servers"][BASE]["t-00001"]
    assert saved["slots"]["resnet"]["last_sequence"] == 3 and "running" not in saved
