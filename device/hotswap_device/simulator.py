"""A fleet of virtual devices in one process, speaking device protocol 2 (devices/PROTOCOL.md) over HTTP.

    python -m hotswap_device.simulator --server http://127.0.0.1:8000 --enroll-key hse_... --devices 5000 \\
        --behaviour 'detector-1.1.0=latency:40±5,errors:0.02,accuracy:0.85;classifier=latency:8' --duration 600

Each device enrolls once (credentials are cached in a state file, so a restart reuses them), checks in on
its own jittered timer with If-None-Match, obeys the server's poll interval, and acts on each model slot's
desired state as the reference agent does, with the agent's own protocol code (hotswap_device.client):
verifies the slot's manifest, "installs" the version (a simulated delay, or a real download with --download),
removes a model, refuses what the agent refuses. It reports installs and, per model it runs, SYNTHETIC
metric windows drawn from that model version's behaviour. Imports nothing from Django; `run_fleet(config)` runs it
in-process. With OTEL_TRACES_EXPORTER=console or otlp (service `hotswap-simulator`) each install is a
`model.swap` span under the distribution's trace, as the reference agent's are (device/hotswap_device/tracing.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import secrets
import signal
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import httpx

from hotswap_device import logs as agent_logs
from hotswap_device import tracing
from hotswap_device.client import (
    CONFIRM,
    KEEP,
    REFUSED,
    REMOVE,
    ApiError,
    CheckinExchange,
    Decision,
    SlotView,
    TransientError,
    encode,
    enrollment_read,
    install_report,
    model_entry,
    plan_desired,
)
from hotswap_device.fleet import (
    DEFAULT_REGIONS,
    DEFAULT_TYPES,
    Behaviour,
    BehaviourError,
    DeviceSpec,
    behaviour_for,
    device_spec,
    health_sample,
    metric_window,
    parse_behaviours,
)
from hotswap_device.manifest import PinnedKey
from hotswap_device.protocol import CHECKIN_PATH, ENROLL_PATH, MANIFEST_KEY_PATH, MAX_ITEMS, MAX_MODELS

logger = logging.getLogger("hotswap.simulator")

# httpcore tries `import sniffio` on every request; without sniffio installed (anyio 4 does not need it) each
# failed attempt walks sys.path, a third of the simulator's CPU. A None entry makes that import fail at once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[assignment]

KEY_PATH = MANIFEST_KEY_PATH
DEFAULT_STATE_FILE = Path("var") / "simulator" / "fleet-state.json"
MAX_PENDING = MAX_ITEMS
MIN_WINDOW_SECONDS = 0.5
ENROLL_CONCURRENCY = 10
POOL_SIZE = 8  # connections per httpx pool (see Fleet.run)
INSTALL_ATTEMPTS = 3
STOP_GRACE_SECONDS = 5.0
SERVICE_NAME = "hotswap-simulator"  # the spans' service.name, unless OTEL_SERVICE_NAME says otherwise


@dataclass
class FleetConfig:
    """Everything a simulated fleet run needs; the CLI and the management command build one from options."""

    server: str
    enroll_key: str = ""
    devices: int = 100
    prefix: str = "sim-"
    first_index: int = 1
    regions: tuple[str, ...] = DEFAULT_REGIONS
    types: tuple[str, ...] = DEFAULT_TYPES
    poll_seconds: float = 60.0  # until the server names an interval (its answers always do)
    max_poll_seconds: float | None = None  # cap on the server's interval, for demos and tests
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    inference_rate: float = 10.0  # simulated inferences per second per device
    download: bool = False  # really fetch the artifact and check its sha256
    download_seconds: float = 2.0  # mean simulated download time when not downloading
    duration: float | None = None
    concurrency: int = 200
    state_file: Path | None = DEFAULT_STATE_FILE
    seed: int | None = None
    timeout: float = 30.0
    progress: TextIO | None = None
    progress_seconds: float | None = None  # default: 2 s on a terminal, 10 s otherwise
    # Set by a supervisor sharing its log (runstack): plain lines starting with this, even on a terminal.
    progress_prefix: str = ""
    transport: httpx.AsyncBaseTransport | None = None  # tests: an in-process server
    # Credentials an operator issued (device_id → raw hsd_ key) for devices with none cached: they skip
    # enrollment and pin the key the server publishes at /api/v1/devices/manifest-key.
    credentials: dict[str, str] = field(default_factory=dict)


@dataclass
class FleetStats:
    """What the fleet did; cumulative over the run. `versions` counts what devices run at the end."""

    devices: int = 0
    enrolled: int = 0
    enrolled_now: int = 0
    enroll_throttled: int = 0  # 429 answers to enrollments (the server limits enrollments per client IP)
    checked_in_devices: int = 0
    checkins: int = 0
    not_modified: int = 0
    metric_windows: int = 0
    installs: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    versions: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    fatal: str = ""

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if kind not in self.error_examples:
            self.error_examples[kind] = detail
            logger.warning("simulator: %s%s", kind, f": {detail}" if detail else "")

    def summary(self) -> str:
        share = f"{self.not_modified / self.checkins:.0%}" if self.checkins else "-"
        installs = ", ".join(f"{status} {n}" for status, n in sorted(self.installs.items())) or "none"
        lines = [
            f"{self.devices} devices, {self.elapsed:.0f} s: enrolled {self.enrolled} ({self.enrolled_now} new), "
            f"{self.checked_in_devices} checked in; {self.checkins} check-ins ({share} 304), "
            f"{self.metric_windows} metric windows; install reports: {installs}",
            f"running: {_versions_text(self.versions)}",
        ]
        if self.enroll_throttled:
            lines.append(f"enrollment was throttled by the server {self.enroll_throttled} times (429; its "
                         "THROTTLE_ENROLL rate limits enrollments per client IP)")
        if self.refusals:
            lines.append("refused: " + "; ".join(f"{reason} ×{n}" for reason, n in self.refusals.most_common(5)))
        if self.errors:
            lines.append("errors: " + "; ".join(
                f"{kind} ×{n}" + (f" ({self.error_examples[kind][:160]})" if self.error_examples.get(kind) else "")
                for kind, n in self.errors.most_common(8)))
        if self.fatal:
            lines.append(f"stopped: {self.fatal}")
        return "\n".join(lines)


def _versions_text(versions: Counter, limit: int = 4) -> str:
    common = versions.most_common(limit)
    text = " ".join(f"{name}={n}" for name, n in common)
    rest = sum(versions.values()) - sum(n for _, n in common)
    return (text + (f" +{rest} other" if rest else "")) or "-"


class _Fatal(Exception):
    """The whole fleet must stop (an invalid enrollment key, an unreachable server)."""


@dataclass
class SimSlot:
    """One model slot of a virtual device: what it runs and under which sequence (as the agent's SlotState)."""

    running: dict | None = None  # {"model", "version", "sha256"}
    running_sequence: int | None = None
    last_sequence: int | None = None
    removed: bool = False
    rejected: dict | None = None
    window_start: datetime = field(default_factory=lambda: datetime.now(UTC))
    install_failures: dict[int, int] = field(default_factory=dict)  # sequence → failed attempts
    retry_next_poll: bool = False

    def view(self) -> SlotView:
        running = self.running or {}
        return SlotView(running_version=running.get("version"), running_sha256=running.get("sha256"),
                        running_sequence=self.running_sequence, last_sequence=self.last_sequence,
                        removed=self.removed, rejected=self.rejected)

    def saved(self) -> dict:
        return {"running": self.running, "running_sequence": self.running_sequence,
                "last_sequence": self.last_sequence, "removed": self.removed}

    @classmethod
    def from_saved(cls, data: Mapping) -> SimSlot:
        return cls(running=data.get("running"), running_sequence=data.get("running_sequence"),
                   last_sequence=data.get("last_sequence"), removed=bool(data.get("removed")))


def _saved_slots(saved: Mapping) -> dict[str, SimSlot]:
    """The slots of a saved device; a state file of protocol 1 (one `running` model) becomes that model's slot."""
    if "slots" in saved:
        return {str(name): SimSlot.from_saved(slot) for name, slot in (saved.get("slots") or {}).items()}
    running = saved.get("running")
    if not isinstance(running, dict) or not running.get("model"):
        return {}
    sequence = saved.get("last_sequence")
    return {running["model"]: SimSlot(running=running, running_sequence=sequence, last_sequence=sequence)}


class VirtualDevice:
    """One simulated device: its identity, credential, pinned key, its model slots, and its unsent reports.

    It speaks the protocol through the reference agent's own protocol client (hotswap_device.client): the
    same enrollment, check-in body, 400 handling and per-slot manifest checks as a real device.
    """

    def __init__(self, fleet: Fleet, spec: DeviceSpec, saved: Mapping | None):
        self.fleet, self.spec = fleet, spec
        self.rng = fleet.rng_for(spec.index)
        saved = saved or {}
        self.credential: str = saved.get("credential", "")
        self.key: PinnedKey | None = None
        if saved.get("public_key"):
            self.key = PinnedKey.from_info({"key_id": saved.get("key_id", ""), "public_key": saved["public_key"]})
        self.slots: dict[str, SimSlot] = _saved_slots(saved)
        self.poll: float = fleet.clamp_poll(saved.get("poll") or fleet.config.poll_seconds)
        self.etag = ""
        self.desired: list = []
        self.traceparent = ""
        self.pending_installs: list[dict] = []
        self.pending_metrics: list[dict] = []
        self.last_checkin = 0.0  # monotonic time of the last answered check-in
        self.checked_in = False
        self.stopped = False

    def saved(self) -> dict:
        return {"credential": self.credential, "key_id": self.key.key_id if self.key else "",
                "public_key": base64.b64encode(self.key.public_key).decode() if self.key else "",
                "slots": {name: slot.saved() for name, slot in self.slots.items()}, "poll": self.poll}

    def running(self) -> dict[str, dict]:
        """model → {"model", "version", "sha256"} of every slot serving now."""
        return {name: slot.running for name, slot in sorted(self.slots.items()) if slot.running}

    def version_labels(self, model: str | None = None) -> list[str]:
        """`model-version` of each model it runs (or of `model` only); ["none"] when it runs none of them."""
        labels = [f"{name}-{running['version']}" for name, running in self.running().items()
                  if model is None or name == model]
        return labels or ["none"]

    # --- the device's life --------------------------------------------------------------------------------------

    async def run(self) -> None:
        fleet = self.fleet
        try:
            if not self.credential and not await self.enroll():
                return
            # Spread the fleet's first check-ins over one interval, as devices booting at random times would.
            await fleet.sleep(self.rng.uniform(0, self.poll))
            while not fleet.stopping and not self.stopped:
                answered = await self.checkin()
                if fleet.stopping or self.stopped:
                    break
                if answered and await self.converge():
                    continue  # report the install at once instead of a whole interval later
                await fleet.sleep(self.poll * self.rng.uniform(0.9, 1.1))
        except _Fatal as exc:
            fleet.fail(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a simulator bug must show up in the stats, not vanish with the task
            logger.exception("simulated device %s crashed", self.spec.device_id)
            fleet.stats.error("device crashed", f"{type(exc).__name__}: {exc}")

    async def enroll(self) -> bool:
        fleet = self.fleet
        if not fleet.config.enroll_key:
            fleet.stats.error("no credential", "no cached credential and no enrollment key")
            return False
        failures = 0
        while not fleet.stopping:
            async with fleet.enroll_limit:
                # One gate for the whole fleet: after a 429 nobody knocks again before Retry-After has passed.
                while (wait := fleet.enroll_resume_at - time.monotonic()) > 0 and not fleet.stopping:
                    await fleet.sleep(wait + self.rng.uniform(0, 0.5))
                if fleet.stopping:
                    return False
                body = self.spec.enrollment_body(fleet.config.enroll_key)
                response = await fleet.request("POST", ENROLL_PATH, index=self.spec.index, content=encode(body),
                                               headers={"Content-Type": "application/json"})
                try:
                    if response is None:
                        raise TransientError("no answer")
                    answer = enrollment_read(response.status_code, response.headers, response.content)
                except TransientError as exc:
                    if exc.status == 429:
                        fleet.throttled(exc.retry_after)
                        continue
                    answer = None
                except ApiError as exc:
                    if exc.status == 403:
                        raise _Fatal(f"the enrollment key was refused ({exc.code}): create a new one") from exc
                    if exc.status == 409:
                        fleet.stats.error("enroll: device exists", f"{self.spec.device_id} exists on the server but "
                                          "this simulator has no credential for it (state file lost?)")
                    else:
                        fleet.stats.error(f"enroll: {exc.status} {exc.code}", exc.message[:300])
                    return False
            if answer is not None:
                self.credential, self.key = answer.credential, answer.key
                self.poll = fleet.clamp_poll(answer.poll_interval_seconds or self.poll)
                self.slots = {}
                fleet.stats.enrolled += 1
                fleet.stats.enrolled_now += 1
                fleet.dirty = True
                return True
            failures += 1
            if failures >= 5:
                return False
            await fleet.sleep(min(30.0, 2.0**failures) * self.rng.uniform(0.5, 1.5))
        return False

    def _collect_window(self, name: str, slot: SimSlot, now: datetime) -> None:
        """Closes the slot's window at `now`: synthetic calls drawn from that model version's behaviour."""
        if not slot.running or (now - slot.window_start).total_seconds() < MIN_WINDOW_SECONDS:
            return
        version = slot.running["version"]
        window = metric_window(behaviour_for(self.fleet.config.behaviours, name, version), model=name,
                               version=version, start=slot.window_start, end=now,
                               inference_rate=self.fleet.config.inference_rate, rng=self.rng)
        slot.window_start = now
        if window:
            self.pending_metrics.append(window)
            if len(self.pending_metrics) > MAX_PENDING * MAX_MODELS:
                del self.pending_metrics[0]
                self.fleet.stats.error("metric window dropped", "too many unsent windows (server unreachable)")

    async def checkin(self) -> bool:
        """One check-in (resent at once without the items a 400 names); True when the server answered 200/304."""
        fleet = self.fleet
        now = datetime.now(UTC)
        for name, slot in self.slots.items():
            self._collect_window(name, slot, now)
        exchange = CheckinExchange(
            credential=self.credential, models=list(self.running().values()), installs=self.pending_installs,
            metrics=self.pending_metrics, health=health_sample(self.spec, self.rng), etag=self.etag,
            traceparent=f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01", limit=MAX_PENDING, attempts=2)
        while True:
            try:
                body, headers = exchange.request()
            except TransientError:
                return False
            response = await fleet.request("POST", CHECKIN_PATH, index=self.spec.index, content=encode(body),
                                           headers=headers)
            if response is None:
                return False
            try:
                answer = exchange.answer(response.status_code, response.headers, response.content)
            except (ApiError, TransientError) as exc:
                await self._refused(exchange, exc, response)
                return False
            if answer is None:
                fleet.stats.error("checkin: 400 (named items dropped, rest resent)", response.text[:300])
                continue
            break
        fleet.stats.metric_windows += exchange.sent_metrics
        for report in exchange.acknowledged_installs:
            fleet.stats.installs[report["status"]] += 1
        fleet.stats.checkins += 1
        self.last_checkin = time.monotonic()
        if not self.checked_in:
            self.checked_in = True
            fleet.stats.checked_in_devices += 1
        self.etag = answer.etag or self.etag
        if answer.status == 304:
            fleet.stats.not_modified += 1
        else:
            self.desired = answer.desired or []
            self.traceparent = answer.traceparent
            if answer.poll_interval_seconds:
                self.poll = fleet.clamp_poll(answer.poll_interval_seconds)
        return True

    async def _refused(self, exchange: CheckinExchange, exc: Exception, response: httpx.Response) -> None:
        fleet = self.fleet
        status = response.status_code
        code = exc.code if isinstance(exc, ApiError) else ""
        if status == 401:
            fleet.stats.error(f"checkin: 401 {code}", f"{self.spec.device_id}: re-enrolling")
            self.credential, self.etag = "", ""
            if not await self.enroll():
                self.stopped = True
            return
        if status == 403:
            fleet.stats.error(f"checkin: 403 {code}", self.spec.device_id)
            self.stopped = True
            return
        fleet.stats.error(f"checkin: {status} {code}".strip(), response.text[:300])
        if status in (400, 413):
            # Nothing to salvage by resending the same body: drop it, counted above.
            exchange.drop_batch()
        if isinstance(exc, TransientError) and exc.retry_after:
            await fleet.sleep(exc.retry_after)

    # --- desired state, slot by slot --------------------------------------------------------------------------

    def _report(self, manifest: Mapping, status: str, **fields) -> None:
        self.pending_installs.append(install_report(manifest, status, **fields))

    async def converge(self) -> bool:
        """Acts on each slot's desired state; True when there is something new to report right away."""
        if not self.desired or not self.key:
            return False
        views = {name: slot.view() for name, slot in self.slots.items()}
        news = False
        for decision in plan_desired(self.desired, key=self.key, device_id=self.spec.device_id, slots=views,
                                     now=datetime.now(UTC)):
            if self.fleet.stopping:
                break
            news = await self._apply(decision) or news
        return news

    async def _apply(self, decision: Decision) -> bool:
        manifest = decision.manifest
        if decision.kind == KEEP:
            return False
        if decision.kind == REFUSED:
            if decision.reported:
                return False
            # A refusal is a swap that failed its first step, as on the reference agent's trace.
            with tracing.span("model.swap", traceparent=self.traceparent, attributes=_swap_attributes(
                    self.spec.device_id, manifest) if tracing.enabled() else None) as swap:
                with tracing.span("model.verify", attributes={"verify.subject": "manifest"}) as check:
                    tracing.failed(check, decision.error)
                tracing.annotate(swap, **{"install.outcome": "refused"})
                tracing.failed(swap, decision.error)
                self.fleet.stats.refusals[decision.code] += 1
                self._report(manifest, "refused", error=decision.error,
                             traceparent=tracing.traceparent_of(swap, self.traceparent))
            self.slots.setdefault(decision.model, SimSlot()).rejected = decision.rejection
            return True
        slot = self.slots.setdefault(decision.model, SimSlot())
        sequence = manifest["sequence"]
        if decision.kind == REMOVE:
            self._collect_window(decision.model, slot, datetime.now(UTC))
            removed = slot.running
            slot.running, slot.running_sequence, slot.last_sequence, slot.removed = None, None, sequence, True
            if removed:
                self._report(manifest, "removed", version=removed["version"], duration_ms=0,
                             traceparent=self.traceparent)
            self.fleet.dirty = True
            return bool(removed)
        if decision.kind == CONFIRM:  # already runs it (the same version set again): confirm the new sequence
            slot.running_sequence = slot.last_sequence = sequence
            self._report(manifest, "active", duration_ms=0, traceparent=self.traceparent)
            self.fleet.dirty = True
            return True
        if slot.install_failures.get(sequence, 0) >= INSTALL_ATTEMPTS:
            return False
        if slot.retry_next_poll:  # a failed install is retried one poll interval later, not at once
            slot.retry_next_poll = False
            return False
        # The agent's model.swap, a child of the answer's traceparent (the distribution's trace); the reports
        # carry the swap's own context so the server's device.update links to it. Without tracing each span
        # below is one `is None` test and the server's traceparent is reported as is.
        with tracing.span("model.swap", traceparent=self.traceparent, attributes=_swap_attributes(
                self.spec.device_id, manifest) if tracing.enabled() else None) as swap:
            with tracing.span("model.verify", attributes={"verify.subject": "manifest"}):
                pass  # plan_desired checked it, with the agent's own code
            outcome, error = await self._swap(decision.model, slot, manifest,
                                              tracing.traceparent_of(swap, self.traceparent))
            tracing.annotate(swap, **{"install.outcome": outcome})
            if error:
                tracing.failed(swap, error)
        return outcome != "interrupted"

    async def _swap(self, name: str, slot: SimSlot, manifest: dict, traceparent: str) -> tuple[str, str]:
        """Fetches and switches the slot to the desired version, queueing its reports; (outcome, error)."""
        sequence = manifest["sequence"]
        started = time.monotonic()
        error = await self._fetch(manifest)
        if self.fleet.stopping:
            return "interrupted", ""
        download_ms = round((time.monotonic() - started) * 1000)
        if error:
            slot.install_failures[sequence] = slot.install_failures.get(sequence, 0) + 1
            slot.retry_next_poll = True
            self._report(manifest, "failed", duration_ms=download_ms, error=error, traceparent=traceparent)
            return "failed", error
        # Where the agent loads the model into onnxruntime and warms it up: a virtual device has no runtime.
        with tracing.span("model.load", attributes={"model.version": str(manifest["version"]), "warmup.runs": 0,
                                                    "device.simulated": True}):
            pass
        self._report(manifest, "installed", duration_ms=download_ms, traceparent=traceparent)
        # Close the old version's window at the swap, so each window belongs to exactly one version.
        now = datetime.now(UTC)
        self._collect_window(name, slot, now)
        slot.running = model_entry(name, manifest["version"], manifest["sha256"])
        slot.running_sequence = slot.last_sequence = sequence
        slot.removed, slot.rejected, slot.window_start = False, None, now
        self._report(manifest, "active", duration_ms=round((time.monotonic() - started) * 1000),
                     traceparent=traceparent)
        self.fleet.dirty = True
        return "installed", ""

    async def _fetch(self, manifest: dict) -> str:
        """Simulates the download, or really does it with --download and checks it; an error message or ""."""
        config = self.fleet.config
        size = manifest["size"]
        with tracing.span("model.download", attributes={"artifact.size": size,
                                                        "download.simulated": not config.download}) as current:
            if not config.download:
                await self.fleet.sleep(config.download_seconds * self.rng.uniform(0.5, 1.5))
                return ""
            error, sha256, received = await self._download(str(manifest["url"]))
            tracing.annotate(current, **{"download.bytes": received})
            if error:
                tracing.failed(current, error)
                return error
        with tracing.span("model.verify", attributes={"verify.subject": "artifact", "artifact.size": size}) as check:
            if sha256 != manifest["sha256"]:
                error = f"sha256 mismatch: expected {manifest['sha256']}, got {sha256}"
            elif received != size:
                error = f"size mismatch: expected {size} bytes, got {received}"
            if error:
                tracing.failed(check, error)
        return error

    async def _download(self, url: str) -> tuple[str, str, int]:
        """Streams the artifact, hashing it on the way; (error or "", sha256, bytes received)."""
        digest, size = hashlib.sha256(), 0
        try:
            client = self.fleet.client_for(self.spec.index)
            async with self.fleet.limit, client.stream("GET", url) as response:
                if response.status_code != 200:
                    return f"download answered HTTP {response.status_code}", "", 0
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
        except httpx.HTTPError as exc:
            return f"download failed: {type(exc).__name__}: {exc}"[:2000], "", size
        return "", digest.hexdigest(), size


def _swap_attributes(device_id: str, manifest: dict) -> dict:
    """model.swap's attributes, the agent's names, plus device.simulated (these spans come from no real device)."""
    name, version = str(manifest.get("model", ""))[:64], str(manifest.get("version", ""))[:64]
    sequence = manifest.get("sequence")
    return {"device.id": device_id, "device.simulated": True, "model.id": f"{name}-{version}", "model.name": name,
            "model.version": version, "manifest.sequence": sequence if isinstance(sequence, int) else None,
            "manifest.rollback": bool(manifest.get("rollback"))}


def load_state(path: Path | None, server: str) -> dict[str, dict]:
    """What the state file remembers about the devices of `server` (device_id → credential, key, version...)."""
    if not path or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return dict(data.get("servers", {}).get(server.rstrip("/"), {}))
    except (ValueError, AttributeError) as exc:
        logger.warning("ignoring unreadable state file %s: %s", path, exc)
        return {}


class Fleet:
    """Runs the virtual devices on one event loop and one shared connection pool."""

    def __init__(self, config: FleetConfig, stop: asyncio.Event | None = None):
        if config.devices < 1:
            raise ValueError("devices must be at least 1")
        self.config = config
        self.server = config.server.rstrip("/")
        self.stop = stop or asyncio.Event()
        self.stats = FleetStats(devices=config.devices)
        self.dirty = False
        self.limit = asyncio.Semaphore(max(1, config.concurrency))
        # Enrollment is throttled per client IP on the server: a few at a time, and all wait after a 429.
        self.enroll_limit = asyncio.Semaphore(max(1, min(config.concurrency, ENROLL_CONCURRENCY)))
        self.enroll_resume_at = 0.0
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        self.clients: list[httpx.AsyncClient] = []
        self._stop_future: asyncio.Future | None = None
        self.devices: list[VirtualDevice] = []

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    def rng_for(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{index}")

    def clamp_poll(self, seconds: float) -> float:
        seconds = max(0.1, float(seconds))
        return min(seconds, self.config.max_poll_seconds) if self.config.max_poll_seconds else seconds

    def throttled(self, retry_after: float | None) -> None:
        wait = retry_after or 5.0
        self.stats.enroll_throttled += 1
        self.enroll_resume_at = max(self.enroll_resume_at, time.monotonic() + min(wait, 600.0))

    def fail(self, message: str) -> None:
        if not self.stats.fatal:
            self.stats.fatal = message
        self.stop.set()

    async def sleep(self, seconds: float) -> None:
        """Sleeps, but wakes as soon as the fleet is told to stop."""
        if seconds > 0 and self._stop_future is not None and not self._stop_future.done():
            await asyncio.wait([self._stop_future], timeout=seconds)

    def client_for(self, index: int) -> httpx.AsyncClient:
        return self.clients[index % len(self.clients)]

    async def request(self, method: str, path: str, *, index: int = 0, **kwargs) -> httpx.Response | None:
        """One request within the concurrency limit; None (and an error counted) when there was no answer."""
        async with self.limit:
            for attempt in (1, 2):
                try:
                    response = await self.client_for(index).request(method, path, **kwargs)
                    await response.aread()
                    return response
                except httpx.TimeoutException as exc:
                    self.stats.error("timeout", f"{method} {path}: {type(exc).__name__}")
                except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                    # Usually a kept-alive connection the server had just closed: one immediate retry on a
                    # fresh one, as a device would resend (reports are only dropped once acknowledged).
                    if attempt == 1:
                        continue
                    self.stats.error(f"connection: {type(exc).__name__}", f"{method} {path}: {exc}")
                except httpx.HTTPError as exc:
                    self.stats.error(f"connection: {type(exc).__name__}", f"{method} {path}: {exc}")
                return None
        return None

    # --- state file ---------------------------------------------------------------------------------------------

    def save_state(self) -> None:
        path = self.config.state_file
        if not path:
            return
        data: dict = {"version": 1, "servers": {}}
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(path.read_text())
                data.setdefault("servers", {})
        devices = data["servers"].setdefault(self.server, {})
        devices.update({d.spec.device_id: d.saved() for d in self.devices if d.credential})
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(temporary, path)
        self.dirty = False

    # --- progress -----------------------------------------------------------------------------------------------

    def snapshot_versions(self) -> Counter:
        """How many devices run each model version (a device running two models counts under both)."""
        return Counter(label for d in self.devices for label in d.version_labels())

    async def _progress(self, started: float) -> None:
        output = self.config.progress
        prefix = self.config.progress_prefix
        tty = bool(output and not prefix and hasattr(output, "isatty") and output.isatty())
        interval = self.config.progress_seconds or (2.0 if tty else 10.0)
        last_checkins, last_304, last_tick = 0, 0, time.monotonic()
        last_save = last_tick
        while not self.stopping:
            await self.sleep(interval)
            now = time.monotonic()
            if self.dirty and now - last_save >= 5:
                self.save_state()
                last_save = now
            if not output:
                continue
            stats = self.stats
            checkins, not_modified = stats.checkins - last_checkins, stats.not_modified - last_304
            seen = sum(1 for d in self.devices if d.last_checkin >= last_tick)
            share = f"{not_modified / checkins:.0%}" if checkins else "-"
            line = (f"[{now - started:5.0f}s] enrolled {stats.enrolled}/{stats.devices} | checked in {seen} "
                    f"in {now - last_tick:.0f}s, {checkins / max(now - last_tick, 1e-9):.1f}/s | 304 {share} | "
                    f"running {_versions_text(self.snapshot_versions())} | errors {sum(stats.errors.values())}")
            if (wait := self.enroll_resume_at - now) > 0:
                line += f" | enrollment throttled (429), next try in {wait:.0f}s"
            output.write(f"\r\x1b[2K{line}" if tty else f"{prefix}{line}\n")
            output.flush()
            last_checkins, last_304, last_tick = stats.checkins, stats.not_modified, now
        if output and tty:
            output.write("\n")
            output.flush()

    # --- the run ------------------------------------------------------------------------------------------------

    async def run(self) -> FleetStats:
        config, started = self.config, time.monotonic()
        self._stop_future = asyncio.ensure_future(self.stop.wait())
        saved = load_state(config.state_file, self.server)
        specs = [device_spec(config.first_index + i, prefix=config.prefix, regions=config.regions,
                             types=config.types) for i in range(config.devices)]
        self.devices = [VirtualDevice(self, spec, saved.get(spec.device_id)) for spec in specs]
        for device in self.devices:
            if not device.credential and config.credentials.get(device.spec.device_id):
                device.credential = config.credentials[device.spec.device_id]
                self.dirty = True
        self.stats.enrolled = sum(1 for d in self.devices if d.credential)
        if self.stats.enrolled < len(self.devices) and not config.enroll_key:
            self.fail(f"{len(self.devices) - self.stats.enrolled} devices have no cached credential "
                      f"(state file {config.state_file}) and no enrollment key was given (--enroll-key)")
            self.stats.versions = self.snapshot_versions()
            return self.stats
        # A few small pools rather than one big one: httpcore scans every pooled connection on each request
        # and each response (O(pool size)), which made a 200-connection pool the simulator's main CPU cost.
        shards = max(1, math.ceil(config.concurrency / POOL_SIZE))
        per_pool = math.ceil(config.concurrency / shards)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = ssl.create_default_context()  # one for all pools: loading the CA bundle costs ~25 ms each time
        self.clients = [httpx.AsyncClient(base_url=self.server, limits=limits, transport=config.transport, verify=tls,
                                          timeout=httpx.Timeout(config.timeout, pool=None),
                                          headers={"User-Agent": "hotswap-fleet-simulator/1"})
                        for _ in range(shards)]
        tasks: list[asyncio.Task] = []
        reporter = None
        try:
            await self._preflight()
            tasks = [asyncio.create_task(d.run(), name=d.spec.device_id) for d in self.devices]
            reporter = asyncio.create_task(self._progress(started))
            everyone = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
            await asyncio.wait([self._stop_future, everyone], timeout=config.duration,
                               return_when=asyncio.FIRST_COMPLETED)
            self.stop.set()
            # Requests in flight finish (their reports count); sleeping devices wake and leave at once.
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, reporter, return_exceptions=True)
            everyone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await everyone
        except _Fatal as exc:
            self.fail(str(exc))
        finally:
            self.stop.set()
            for task in [*tasks, *([reporter] if reporter else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *([reporter] if reporter else []), return_exceptions=True)
            for client in self.clients:
                await client.aclose()
            self._stop_future.cancel()
            with contextlib.suppress(OSError):
                self.save_state()
        self.stats.versions = self.snapshot_versions()
        self.stats.elapsed = time.monotonic() - started
        return self.stats

    async def _preflight(self) -> None:
        try:
            await self.clients[0].get("/health")
        except httpx.HTTPError as exc:
            raise _Fatal(f"cannot reach {self.server}: {type(exc).__name__}: {exc}") from exc
        unpinned = [d for d in self.devices if d.credential and not d.key]
        if unpinned:
            response = await self.request("GET", KEY_PATH)
            try:
                if response is None or response.status_code != 200:
                    raise ValueError(f"GET {KEY_PATH} answered {response.status_code if response else 'nothing'}")
                key = PinnedKey.from_info(response.json())
            except (ValueError, KeyError) as exc:
                raise _Fatal(f"cannot pin the server's manifest key: {exc}") from exc
            for device in unpinned:
                device.key = key


async def run_fleet(config: FleetConfig, *, stop: asyncio.Event | None = None) -> FleetStats:
    """Runs the simulated fleet until `config.duration` passes or `stop` is set; returns what happened."""
    return await Fleet(config, stop).run()


# --- command line ----------------------------------------------------------------------------------------------


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("give at least one value")
    return items


def _positive(kind):
    def parse(value: str):
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {value}")
        return number

    return parse


class BackgroundFleet:
    """A fleet on its own event loop in a background thread, for tests and benchmarks that drive a server."""

    def __init__(self, config: FleetConfig, *, fleet_class: type[Fleet] = Fleet):
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.fleet = fleet_class(config, self.stop_event)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.future = asyncio.run_coroutine_threadsafe(self.fleet.run(), self.loop)

    def running(self, regions: Iterable[str], model: str | None = None) -> Counter:
        """What the devices of these regions run: `model-version` labels per model slot (of `model` only, if
        given), "none" for a device that runs none."""
        wanted = set(regions)
        return Counter(label for d in list(self.fleet.devices) if d.spec.region in wanted
                       for label in d.version_labels(model))

    def stop(self, timeout: float = 30) -> FleetStats:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        try:
            return self.future.result(timeout=timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def add_arguments(parser: argparse.ArgumentParser, *, server_default: str | None = None,
                  enroll_key_required: bool = False) -> None:
    """The simulator's options; the simulate_fleet management command reuses them."""
    parser.add_argument("--server", required=server_default is None, default=server_default,
                        help=f"HotSwap base URL{f' (default {server_default})' if server_default else ''}")
    parser.add_argument("--enroll-key", required=enroll_key_required, default="",
                        help="fleet enrollment key (hse_...); devices with cached credentials do not need it")
    parser.add_argument("--devices", type=_positive(int), default=100, help="how many virtual devices (default 100)")
    parser.add_argument("--prefix", default="sim-", help="device_id prefix; ids are PREFIX00001... (default sim-)")
    parser.add_argument("--first-index", type=int, default=1, help="index of the first device (default 1)")
    parser.add_argument("--regions", type=_csv, default=DEFAULT_REGIONS,
                        help=f"comma-separated regions, spread round-robin (default {','.join(DEFAULT_REGIONS)})")
    parser.add_argument("--types", type=_csv, default=DEFAULT_TYPES,
                        help=f"comma-separated device types (default {','.join(DEFAULT_TYPES)})")
    parser.add_argument("--poll-seconds", type=_positive(float), default=60.0,
                        help="check-in interval until the server names one (default 60)")
    parser.add_argument("--max-poll-seconds", type=_positive(float), default=None,
                        help="never wait longer than this between check-ins, whatever the server says")
    parser.add_argument("--behaviour", "--behavior", action="append", default=[], metavar="SPEC",
                        help="per-version behaviour, e.g. 'resnet-1.1.0=latency:40±5,errors:0.02,accuracy:0.85'; "
                             "repeat or separate with ';'. Keys: MODEL-VERSION, VERSION, MODEL or *. Default for "
                             "unknown versions: latency 20±3 ms, errors 0.001, no accuracy")
    parser.add_argument("--inference-rate", type=float, default=10.0,
                        help="simulated inferences per second per device (default 10)")
    parser.add_argument("--download", action="store_true",
                        help="really download desired artifacts and check their sha256 (default: simulate)")
    parser.add_argument("--download-seconds", type=float, default=2.0,
                        help="mean simulated download time (default 2)")
    parser.add_argument("--duration", type=_positive(float), default=None, help="stop after this many seconds")
    parser.add_argument("--concurrency", type=_positive(int), default=200,
                        help="maximum requests in flight, and connections in the pool (default 200)")
    parser.add_argument("--state-file", type=Path, default=DEFAULT_STATE_FILE,
                        help=f"where credentials are cached between runs (default {DEFAULT_STATE_FILE})")
    parser.add_argument("--no-state", action="store_true", help="do not read or write a state file")
    parser.add_argument("--seed", type=int, default=None, help="random seed for jitter and metrics")
    parser.add_argument("--progress-seconds", type=_positive(float), default=None,
                        help="progress refresh (default 2 s on a terminal, a line every 10 s otherwise)")
    parser.add_argument("--progress-prefix", default="",
                        help="print progress as plain lines starting with this, even on a terminal (for a "
                             "supervisor's log)")
    parser.add_argument("--quiet", action="store_true", help="no progress display, only the summary")


def config_from_options(options: Mapping, *, enroll_key: str | None = None,
                        output: TextIO | None = None) -> FleetConfig:
    """A FleetConfig from parsed options (argparse namespace vars or a management command's options)."""
    return FleetConfig(
        server=options["server"], enroll_key=enroll_key if enroll_key is not None else options.get("enroll_key", ""),
        devices=options["devices"], prefix=options["prefix"], first_index=options["first_index"],
        regions=tuple(options["regions"]), types=tuple(options["types"]), poll_seconds=options["poll_seconds"],
        max_poll_seconds=options["max_poll_seconds"], behaviours=parse_behaviours(options["behaviour"]),
        inference_rate=options["inference_rate"], download=options["download"],
        download_seconds=options["download_seconds"], duration=options["duration"],
        concurrency=options["concurrency"], state_file=None if options["no_state"] else options["state_file"],
        seed=options["seed"], progress=None if options["quiet"] else (output or sys.stdout),
        progress_seconds=options["progress_seconds"], progress_prefix=options.get("progress_prefix", ""),
    )


def configure_tracing(environ: Mapping[str, str] = os.environ) -> bool:
    """Spans go where OTEL_TRACES_EXPORTER says (service `hotswap-simulator`), unless already set; True when tracing.

    Raises tracing.TracingConfigError for an exporter this build does not know.
    """
    return tracing.enabled() or tracing.configure(environ, service_name=SERVICE_NAME)


async def run_until_signalled(config: FleetConfig) -> FleetStats:
    """run_fleet as a process's main task (the command line, simulate_fleet, runstack's demo fleet): spans
    exported as OTEL_TRACES_EXPORTER says, Ctrl-C / SIGTERM stopping it gracefully (a second Ctrl-C interrupts
    at once)."""
    configure_tracing()
    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def on_signal(signum: int) -> None:
        if config.progress:
            config.progress.write("\nstopping (Ctrl-C again to interrupt)…\n")
        stop.set()
        loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
    return await run_fleet(config, stop=stop)


def describe(config: FleetConfig) -> str:
    behaviours = "; ".join(f"{key}: {b.describe()}" for key, b in config.behaviours.items()) or "defaults"
    return (f"{config.progress_prefix}simulating {config.devices} devices ({config.prefix}{config.first_index:05d}…) "
            f"against {config.server}, "
            f"regions {','.join(config.regions)}, types {','.join(config.types)}, behaviour: {behaviours}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotswap_device.simulator",
                                     description="Simulate a fleet of HotSwap devices over the real protocol.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_options(vars(args))
        configure_tracing()
    except (BehaviourError, tracing.TracingConfigError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    agent_logs.install()
    print(describe(config), flush=True)
    stats = asyncio.run(run_until_signalled(config))
    print(stats.summary(), flush=True)
    return 1 if stats.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
