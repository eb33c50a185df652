"""The agent: enroll once, check in, act on each model slot's desired state, serve the applications' inferences.

Every model the server asks for runs in its own slot: installed, hot-swapped, rolled back from disk and
removed independently, while the other slots keep serving. Applications call `Agent.infer(model, inputs)`
(or the local HTTP API, localapi.py) and `Agent.feedback(inference_id, expected)`; the metric windows the
agent reports are built from those calls.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from hotswap_device import health, tracing
from hotswap_device.client import (
    CONFIRM,
    INSTALL,
    KEEP,
    REFUSED,
    REMOVE,
    ApiError,
    CheckinExchange,
    Decision,
    ServerClient,
    SlotView,
    TransientError,
    enrollment_body,
    install_report,
    model_entry,
    plan_desired,
    rejection_key,
    summary,
)
from hotswap_device.download import DownloadInterrupted, IntegrityError, download, verify_file
from hotswap_device.manifest import PinnedKey
from hotswap_device.metrics import MetricsRecorder
from hotswap_device.protocol import CHECKIN_PATH
from hotswap_device.runtime import (
    InferCallback,
    InferenceWorkers,
    LoadedModel,
    ModelLoadError,
    NoActiveModel,
    SlotRuntimes,
    load_model,
    signature,
)
from hotswap_device.store import AgentState, DataDir, ModelRecord, SlotState

logger = logging.getLogger(__name__)

# Reports waiting for the server are bounded so a device offline for weeks cannot fill its disk.
MAX_QUEUED_INSTALLS = 500
MAX_QUEUED_METRICS = 2000
# Inferences an application may still attach ground truth to (Agent.feedback), newest kept.
FEEDBACK_MEMORY = 10_000
# Outputs kept per inference so feedback can compare them with expected ones; larger ones keep only the label.
KEPT_OUTPUT_BYTES = 64 * 1024


class EnrollmentFailed(Exception):
    """The server refused the enrollment (bad key, device exists, invalid data): a person must act."""


class InstallFailed(Exception):
    """The install cannot succeed as it stands (no space, unsupported format)."""


class UnknownInference(KeyError):
    """feedback() for an inference id the agent does not remember (unknown, too old, or already labelled)."""


@dataclass
class SlotOutcome:
    """What one check-in cycle did to one model slot."""

    action: str  # installed, already_running, removed, refused, failed, deferred
    version: str | None = None
    error: str = ""
    commit: bool = True  # False: the answer's ETag must not be kept (the slot must be dealt with again)


@dataclass
class CycleResult:
    """What one check-in cycle did; `next_delay` is when the next one is due (seconds).

    `slots` says what happened to each model slot the answer named; `action`, `version` and `error` repeat
    the most notable of them (a change rather than "already_running"), for the common one-change cycle.
    """

    status: str  # ok, not_modified, backoff, rejected, decommissioned (final: stop the agent)
    action: str = "none"
    version: str | None = None
    error: str = ""
    next_delay: float = 60.0
    sent_installs: int = 0
    sent_metrics: int = 0
    dropped: list[str] = field(default_factory=list)
    slots: dict[str, SlotOutcome] = field(default_factory=dict)


@dataclass(frozen=True)
class Inference:
    """One served call: its id (for feedback), the model version that served it, and its outputs by name."""

    inference_id: str
    model: str
    version: str
    outputs: dict[str, Any]


@dataclass
class _Served:
    model: str
    version: str
    label: Any  # the predicted class: argmax of the first output (or its value, for an integer output)
    outputs: dict[str, Any] | None  # None when too large to keep


def default_device_id() -> str:
    host = "".join(c if c.isalnum() or c in "._:-" else "-" for c in socket.gethostname()).strip("-._:")[:50]
    return f"{host or 'device'}-{secrets.token_hex(3)}"


class Agent:
    """A device's agent: drive it with `run_once()` (one check-in cycle) or `run_forever(stop_event)`."""

    def __init__(
        self,
        server: str,
        data_dir: str | os.PathLike[str],
        *,
        enroll_key: str | None = None,
        device_id: str | None = None,
        name: str = "",
        device_type: str = "",
        region: str = "",
        tags: Sequence[str] = (),
        capabilities: dict[str, Any] | None = None,
        synthetic_threads: int = 0,
        synthetic_interval_seconds: float = 0.0,
        infer: InferCallback | None = None,
        window_seconds: float = 60.0,
        grace_seconds: float = 5.0,
        warmup_runs: int = 3,
        session_threads: int | None = 1,
        download_attempts: int = 3,
        backoff_base_seconds: float = 2.0,
        backoff_cap_seconds: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = DataDir(data_dir)
        self.state: AgentState = self.store.load_state()
        self.enroll_key = enroll_key
        self.requested_device_id = device_id
        self.profile = {"name": name, "device_type": device_type, "region": region, "tags": list(tags)}
        self.capabilities = capabilities
        self.client = ServerClient(server, transport=transport)
        self.metrics = MetricsRecorder(window_seconds=window_seconds)
        self.runtime = SlotRuntimes(grace_seconds=grace_seconds, infer=infer, recorder=self.metrics.record)
        self.infer_callback = infer
        self.warmup_runs = warmup_runs
        self.session_threads = session_threads
        self.download_attempts = download_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self._failures = 0
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self._served_lock = threading.Lock()
        # Synthetic load: random inputs, for the simulator, demos and tests only; windows then measure noise.
        self._workers = InferenceWorkers(self.runtime, threads=synthetic_threads,
                                         interval_seconds=synthetic_interval_seconds) if synthetic_threads else None
        self._key: PinnedKey | None = None
        if self.enrolled:
            self._key = PinnedKey.from_info(self.store.public_key or {})
        self._restore()

    # --- identity and enrollment -------------------------------------------------------------

    @property
    def enrolled(self) -> bool:
        return bool(self.store.credential and self.store.public_key and self.store.identity.get("device_id"))

    @property
    def device_id(self) -> str | None:
        return self.store.identity.get("device_id")

    def enroll(self) -> None:
        """Enrolls with the enrollment key unless the data dir already holds a credential."""
        if self.enrolled:
            return
        if not self.enroll_key:
            raise EnrollmentFailed(f"{self.store.path} holds no credential and no enrollment key was given")
        identity = self.store.identity
        # The id is chosen and written before the call: a retry after a lost answer uses the same id.
        device_id = identity.get("device_id") or self.requested_device_id or default_device_id()
        if identity.get("device_id") != device_id:
            self.store.identity = {**identity, "device_id": device_id}
        body = enrollment_body(self.enroll_key, device_id, capabilities=self.capabilities or self._capabilities(),
                               **self.profile)
        try:
            answer = self.client.enroll(body)
        except ApiError as exc:
            raise EnrollmentFailed(f"enrollment refused: {exc}") from exc
        self.store.public_key = answer.key_info
        self.store.identity = {"device_id": answer.device_id, "checkin_url": answer.checkin_url}
        self._set_poll_interval(answer.poll_interval_seconds)
        # The credential last: its presence is what marks the device as enrolled.
        self.store.credential = answer.credential
        self._key = answer.key
        self._save()
        logger.info("enrolled as %s; manifest key %s pinned", self.device_id, answer.key.key_id)

    def _capabilities(self) -> dict[str, Any]:
        try:
            stats = os.statvfs(self.store.path)
            storage_gb: int | None = int(stats.f_blocks * stats.f_frsize // 10**9)
        except (OSError, AttributeError):
            storage_gb = None
        return {"cpu_cores": os.cpu_count(), "memory_mb": health.memory_mb(), "storage_gb": storage_gb, "gpu": None}

    # --- the applications' calls -------------------------------------------------------------

    def infer(self, model: str, inputs: Mapping[str, Any]) -> Inference:
        """Runs `model` (the slot of that name) on the application's inputs: numpy arrays by input name.

        Returns the outputs by output name and an inference id for feedback(). Timed and counted in the
        metric windows the server judges rollouts by. Raises NoActiveModel (no such model runs),
        InvalidInputs (names, dtypes or ranks do not fit: the model never ran, nothing is counted) or
        InferenceFailed (the model failed: counted as an error).
        """
        served, raw = self.runtime.run(model, dict(inputs))
        names = [arg.name for arg in served.session.get_outputs()]
        outputs = dict(zip(names, raw, strict=False)) if isinstance(raw, (list, tuple)) else {"output": raw}
        inference_id = secrets.token_hex(12)
        first = next(iter(outputs.values()), None)
        kept = outputs if sum(getattr(v, "nbytes", KEPT_OUTPUT_BYTES) for v in outputs.values()) \
            <= KEPT_OUTPUT_BYTES else None
        with self._served_lock:
            self._served[inference_id] = _Served(served.name, served.version, _label(first), kept)
            while len(self._served) > FEEDBACK_MEMORY:
                self._served.popitem(last=False)
        return Inference(inference_id, served.name, served.version, outputs)

    def feedback(self, inference_id: str, expected: Any) -> bool:
        """Attaches ground truth to an earlier inference; returns whether the model got it right.

        `expected` is either True/False (the application's own verdict), a class index (compared with the
        argmax of the first output, or its value when that output is an integer), or the expected outputs
        (an array for the first output, or a mapping of output name to array; equal within 1e-3). Counts in
        the accuracy of the window open now, for the version that served the call (if that version serves no
        call in this window, in its next window that has calls, within an hour). Each inference takes one
        feedback; UnknownInference for an id that is unknown, among more than the last 10,000, or already
        labelled.
        """
        with self._served_lock:
            served = self._served.pop(inference_id, None)
        if served is None:
            raise UnknownInference(inference_id)
        try:
            correct = _is_correct(served, expected)
        except ValueError:
            with self._served_lock:
                self._served[inference_id] = served  # the mistake was the caller's: the inference stays open
            raise
        self.metrics.record_feedback(served.model, served.version, correct)
        return correct

    def models(self) -> dict[str, dict[str, Any]]:
        """Every model serving now: its version, sha256 and input/output signature."""
        return {name: {"model": name, "version": loaded.version, "sha256": loaded.sha256, **signature(loaded)}
                for name, loaded in sorted(self.runtime.actives().items())}

    # --- the cycle ---------------------------------------------------------------------------

    def run_once(self, *, now: datetime | None = None) -> CycleResult:
        """One cycle: send queued reports with a check-in, act on the answer, send the new reports at once."""
        try:
            self.enroll()
        except TransientError as exc:
            return self._backoff(exc)
        self._queue_windows()
        exchange = self._exchange(etag=self.state.etag)
        try:
            answer = self.client.checkin(exchange, path=self._checkin_path)
        except TransientError as exc:
            self._save()
            return self._backoff(exc, dropped=exchange.dropped_fields)
        except ApiError as exc:
            self._save()
            if exc.status == 403 and exc.code == "DEVICE_DECOMMISSIONED":
                # Final (PROTOCOL §2): neither a retry nor a new enrollment would be answered otherwise.
                logger.error("the server says this device is decommissioned (%s); stopping", exc)
                return CycleResult(status="decommissioned", error=str(exc), next_delay=0.0,
                                   dropped=exchange.dropped_fields)
            if exc.status in (401, 403):
                logger.error("the server locked this device out (%s); an operator must re-issue a credential", exc)
            return self._backoff(exc, status="rejected", dropped=exchange.dropped_fields)
        self._failures = 0
        result = CycleResult(status="ok" if answer.status == 200 else "not_modified")
        self._set_poll_interval(answer.poll_interval_seconds)
        if answer.status == 200:
            if answer.desired is not None:
                result.slots = self._act(answer.desired, traceparent=answer.traceparent, now=now)
            if answer.desired is not None and all(o.commit for o in result.slots.values()):
                self.state.etag = answer.etag
        _summarise(result)
        self._save()
        sent = [exchange.sent_installs, exchange.sent_metrics]
        dropped = exchange.dropped_fields
        if self.state.pending_installs:
            flushed = self._flush_reports()
            sent = [sent[0] + flushed.sent_installs, sent[1] + flushed.sent_metrics]
            dropped += flushed.dropped_fields
        result.sent_installs, result.sent_metrics = sent
        result.dropped = dropped
        # Up to 10% later than asked, never earlier: spreads a fleet that booted together.
        result.next_delay = self.state.poll_interval_seconds * random.uniform(1.0, 1.1)
        return result

    @property
    def _checkin_path(self) -> str:
        return self.store.identity.get("checkin_url") or CHECKIN_PATH

    def _exchange(self, *, etag: str | None) -> CheckinExchange:
        credential = self.store.credential
        assert credential is not None
        return CheckinExchange(credential=credential, models=self._running_models(),
                               installs=self.state.pending_installs, metrics=self.state.pending_metrics,
                               health=health.snapshot(self.store.path), etag=etag)

    def _flush_reports(self) -> CheckinExchange:
        # Install results go out at once rather than a poll interval later: a rollout is waiting on them.
        # Not acted upon (and the ETag is not kept), so the next cycle sees this answer again.
        exchange = self._exchange(etag=self.state.etag)
        try:
            answer = self.client.checkin(exchange, path=self._checkin_path)
        except (TransientError, ApiError) as exc:
            logger.warning("reports stay queued for the next check-in: %s", exc)
        else:
            self._set_poll_interval(answer.poll_interval_seconds)
        self._save()
        return exchange

    def _backoff(self, exc: Exception, *, status: str = "backoff", dropped: list[str] | None = None) -> CycleResult:
        self._failures += 1
        # Exponential with jitter, capped: a fleet that lost its server does not come back in lockstep.
        ceiling = min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** (self._failures - 1))
        delay = ceiling * random.uniform(0.5, 1.0)
        logger.warning("check-in failed (%s); next attempt in %.1f s", exc, delay)
        return CycleResult(status=status, error=str(exc), next_delay=delay, dropped=dropped or [])

    def _set_poll_interval(self, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            self.state.poll_interval_seconds = float(min(max(value, 1), 86400))

    def _queue_windows(self, windows: list[dict[str, Any]] | None = None) -> None:
        self.state.pending_metrics.extend(self.metrics.collect() if windows is None else windows)
        for name, cap in (("pending_installs", MAX_QUEUED_INSTALLS), ("pending_metrics", MAX_QUEUED_METRICS)):
            queue: list[dict[str, Any]] = getattr(self.state, name)
            if len(queue) > cap:
                for item in queue[: len(queue) - cap]:
                    logger.warning("report queue full: dropping the oldest report %s", summary(item))
                del queue[: len(queue) - cap]

    def flush_metrics(self) -> int:
        """Closes the open metric window now and queues it (tests, shutdown); returns how many were queued."""
        windows = self.metrics.flush()
        self._queue_windows(windows)
        self._save()
        return len(windows)

    def _running_models(self) -> list[dict[str, str]]:
        """The check-in's `models`: every slot serving now."""
        entries = []
        for name, slot in sorted(self.state.slots.items()):
            if slot.current is not None and self.runtime.active(name) is not None:
                entries.append(model_entry(name, slot.current.version, slot.current.sha256))
        return entries

    # --- acting on the desired state, slot by slot ----------------------------------------------

    def _view(self, name: str, slot: SlotState) -> SlotView:
        current = slot.current if self.runtime.active(name) is not None else None
        return SlotView(running_version=current.version if current else None,
                        running_sha256=current.sha256 if current else None,
                        running_sequence=current.sequence if current else None,
                        last_sequence=slot.last_sequence, removed=slot.removed, rejected=slot.rejected)

    def _act(self, desired: list[Any], *, traceparent: str, now: datetime | None) -> dict[str, SlotOutcome]:
        assert self._key is not None and self.device_id is not None
        views = {name: self._view(name, slot) for name, slot in self.state.slots.items()}
        outcomes: dict[str, SlotOutcome] = {}
        for decision in plan_desired(desired, key=self._key, device_id=self.device_id, slots=views, now=now):
            # One slot's trouble (a refusal, a failed download, a bug) never stops the others.
            try:
                outcomes[decision.model] = self._apply(decision, traceparent)
            except Exception as exc:
                logger.exception("acting on %s failed", decision.model)
                outcomes[decision.model] = SlotOutcome("failed", decision.manifest.get("version"), str(exc),
                                                       commit=False)
        self._prune_models()
        self._save()
        return outcomes

    def _apply(self, decision: Decision, traceparent: str) -> SlotOutcome:
        manifest = decision.manifest
        if decision.kind == REFUSED:
            return self._refuse(decision, traceparent)
        slot = self.state.slot(decision.model)
        slot.last_sequence = max(slot.last_sequence or 0, manifest["sequence"])
        if decision.kind == KEEP:
            return SlotOutcome("removed" if manifest["action"] == REMOVE else "already_running",
                               manifest.get("version"))
        if decision.kind == REMOVE:
            return self._remove(decision.model, slot, manifest, traceparent)
        slot.removed = False
        if decision.kind == CONFIRM:
            # Desired again under a new sequence (e.g. a rollout picked it): say it is active for that one.
            assert slot.current is not None
            slot.current.sequence = manifest["sequence"]
            self._report(manifest, "active", duration_ms=0, traceparent=traceparent)
            return SlotOutcome("already_running", manifest["version"])
        assert decision.kind == INSTALL
        failed = slot.rejected or {}
        if str(failed.get("code", "")).startswith("failed") and \
                rejection_key(manifest, failed["code"]) == failed:
            return SlotOutcome("failed", manifest["version"], "failed before; waiting for a new desired state")
        return self._install(slot, manifest, traceparent)

    def _refuse(self, decision: Decision, traceparent: str) -> SlotOutcome:
        version = decision.manifest.get("version") if isinstance(decision.manifest.get("version"), str) else None
        if not decision.reported:
            logger.warning("refused manifest #%s for %s (%s): %s", decision.manifest.get("sequence"),
                           decision.model, version, decision.error)
            self._report(decision.manifest, "refused", error=decision.error, traceparent=traceparent)
            if decision.model in self.state.slots or decision.code not in ("bad_signature", "malformed"):
                self.state.slot(decision.model).rejected = decision.rejection
        return SlotOutcome("refused", version, decision.error)

    def _fail(self, slot: SlotState, manifest: dict[str, Any], code: str, error: str,
              traceparent: str) -> SlotOutcome:
        full_code = f"failed:{code}"
        logger.warning("install of %s %s (manifest #%s) failed: %s", manifest["model"], manifest["version"],
                       manifest["sequence"], error)
        self._report(manifest, "failed", error=error, traceparent=traceparent)
        slot.rejected = rejection_key(manifest, full_code)
        return SlotOutcome("failed", manifest["version"], error)

    def _report(self, manifest: Mapping[str, Any], status: str, **fields: Any) -> None:
        self.state.pending_installs.append(install_report(manifest, status, **fields))

    def _remove(self, name: str, slot: SlotState, manifest: dict[str, Any], traceparent: str) -> SlotOutcome:
        """Unloads the model (calls in flight finish), deletes its files, reports `removed` with its version."""
        removed = slot.current or slot.previous
        self.runtime.unload(name)
        for record in (slot.current, slot.previous):
            if record is not None:
                Path(record.path).unlink(missing_ok=True)
        for partial in self.store.partials_of(name):
            partial.unlink(missing_ok=True)
        slot.current = slot.previous = slot.rejected = None
        slot.removed = True
        if removed is not None:
            self._report(manifest, "removed", version=removed.version, duration_ms=0, traceparent=traceparent)
            logger.info("removed %s %s (manifest #%s)", name, removed.version, manifest["sequence"])
        return SlotOutcome("removed", removed.version if removed else None)

    def _install(self, slot: SlotState, manifest: dict[str, Any], traceparent: str) -> SlotOutcome:
        name, version = manifest["model"], manifest["version"]
        attributes = {"device.id": self.device_id, "model.id": f"{name}-{version}", "model.name": name,
                      "model.version": version, "manifest.sequence": manifest["sequence"],
                      "manifest.rollback": bool(manifest.get("rollback"))}
        # A child of the answer's traceparent (the distribution's trace); the reports then carry this
        # span's context, so the server's device.update links to the swap it describes.
        with tracing.span("model.swap", traceparent=traceparent, attributes=attributes) as swap:
            outcome = self._swap_in(slot, manifest, tracing.traceparent_of(swap, traceparent))
            tracing.annotate(swap, **{"install.outcome": outcome.action})
            if outcome.action == "failed":
                tracing.failed(swap, outcome.error)
            return outcome

    def _swap_in(self, slot: SlotState, manifest: dict[str, Any], traceparent: str) -> SlotOutcome:
        started = time.monotonic()
        name, version, sha256 = manifest["model"], manifest["version"], manifest["sha256"]
        try:
            if manifest.get("format", "onnx") != "onnx":
                raise InstallFailed(f"format {manifest.get('format')!r} is not supported by this agent (ONNX only)")
            path = self._local_copy(slot, manifest) or self._download(manifest)
        except DownloadInterrupted as exc:
            # Not a failure yet: the ETag is not kept, so the next check-in brings the manifest (and a fresh URL)
            # again and the download resumes where it stopped.
            logger.warning("download of %s %s interrupted, will resume: %s", name, version, exc)
            return SlotOutcome("deferred", version, str(exc), commit=False)
        except IntegrityError as exc:
            return self._fail(slot, manifest, "integrity", str(exc), traceparent)
        except (InstallFailed, OSError) as exc:
            return self._fail(slot, manifest, "install", str(exc), traceparent)
        try:
            model = load_model(path, name=name, version=version, sha256=sha256, warmup_runs=self.warmup_runs,
                               infer=self.infer_callback, session_threads=self.session_threads)
        except ModelLoadError as exc:
            if str(path) not in self._kept_paths():
                path.unlink(missing_ok=True)
            return self._fail(slot, manifest, "load", str(exc), traceparent)
        self._report(manifest, "installed", duration_ms=_ms_since(started), traceparent=traceparent)
        self.runtime.swap(model)  # this slot only: the others keep serving untouched
        self._report(manifest, "active", duration_ms=_ms_since(started), traceparent=traceparent)
        logger.info("%s %s is active (manifest #%s, %d ms)", name, version, manifest["sequence"],
                    _ms_since(started))
        old = slot.current
        slot.current = ModelRecord(name=name, version=version, sha256=sha256, path=str(path),
                                   size=manifest["size"], sequence=manifest["sequence"])
        # Keep exactly one previous model per slot, so the likely rollback needs no download.
        if old is not None and old.path != str(path):
            slot.previous = old
        if slot.previous is not None and slot.previous.path == str(path):
            slot.previous = None
        slot.rejected = None
        self._save()
        return SlotOutcome("installed", version)

    def _kept_paths(self) -> set[str]:
        return {record.path for slot in self.state.slots.values()
                for record in (slot.current, slot.previous) if record is not None}

    def _prune_models(self) -> None:
        """Deletes model files no slot runs or keeps for a rollback (partial downloads stay to be resumed)."""
        kept = self._kept_paths()
        for entry in self.store.models.iterdir():
            if str(entry) not in kept and entry.suffix == ".onnx":
                logger.info("removing %s (neither an active nor a previous model)", entry.name)
                entry.unlink(missing_ok=True)

    def _local_copy(self, slot: SlotState, manifest: dict[str, Any]) -> Path | None:
        """A file already on disk with the manifest's sha256 (the slot's previous model, for a rollback)."""
        candidates = [Path(r.path) for r in (slot.current, slot.previous)
                      if r is not None and r.sha256 == manifest["sha256"]]
        candidates.append(self.store.model_path(manifest["model"], manifest["version"]))
        for path in candidates:
            if path.exists():
                try:
                    verify_file(path, size=manifest["size"], sha256=manifest["sha256"])
                except IntegrityError as exc:
                    logger.warning("%s on disk is damaged (%s); downloading again", path.name, exc)
                    continue
                logger.info("%s is already on disk: no download", path.name)
                return path
        return None

    def _download(self, manifest: dict[str, Any]) -> Path:
        partial = self.store.partial_path(manifest["model"], manifest["version"])
        have = partial.stat().st_size if partial.exists() else 0
        free = shutil.disk_usage(self.store.models).free
        if manifest["size"] - have > free:
            raise InstallFailed(f"not enough disk space: {manifest['size'] - have} bytes needed, {free} free")
        download(self.client.download_client, manifest["url"], partial, size=manifest["size"],
                 sha256=manifest["sha256"], attempts=self.download_attempts)
        target = self.store.model_path(manifest["model"], manifest["version"])
        os.replace(partial, target)
        return target

    # --- start-up, synthetic load, shutdown ---------------------------------------------------

    def _restore(self) -> None:
        for name, slot in self.state.slots.items():
            current = slot.current
            if current is None:
                continue
            path = Path(current.path)
            try:
                verify_file(path, size=current.size or path.stat().st_size, sha256=current.sha256)
                model: LoadedModel = load_model(path, name=name, version=current.version, sha256=current.sha256,
                                                warmup_runs=self.warmup_runs, infer=self.infer_callback,
                                                session_threads=self.session_threads)
            except (OSError, IntegrityError, ModelLoadError) as exc:
                logger.error("cannot restore %s %s from %s (%s); that slot runs nothing until the server says "
                             "what to run", name, current.version, path, exc)
                slot.current = None
                continue
            self.runtime.swap(model)
            logger.info("restored %s %s", name, current.version)
        self._save()

    def start_synthetic_load(self) -> None:
        """Starts the synthetic-load threads (random inputs; simulator, demo and tests only)."""
        if self._workers is not None:
            logger.warning("SYNTHETIC LOAD: %d threads call every model on random inputs; the metric windows "
                           "this device reports measure them, not an application's traffic", self._workers.threads)
            self._workers.start()

    def stop_synthetic_load(self) -> None:
        if self._workers is not None:
            self._workers.stop()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Cycles until `stop_event` is set or the device is decommissioned (with synthetic load, if asked for).

        EnrollmentFailed ends it too, raised.
        """
        self.start_synthetic_load()
        try:
            while not stop_event.is_set():
                try:
                    result = self.run_once()
                except EnrollmentFailed:
                    raise
                except Exception as exc:
                    # A bug or a full disk must not kill the device's agent; it is logged and retried.
                    logger.exception("check-in cycle failed")
                    result = self._backoff(exc)
                if result.status == "decommissioned":
                    return
                stop_event.wait(result.next_delay)
        finally:
            self.stop_synthetic_load()
            # The last partial window is kept and sent after the restart.
            self.flush_metrics()

    def _save(self) -> None:
        self.store.save_state(self.state)

    def close(self) -> None:
        self.stop_synthetic_load()
        self.runtime.close()
        self.client.close()


_NOTABLE = ("failed", "refused", "deferred", "installed", "removed")


def _summarise(result: CycleResult) -> None:
    for action in (*_NOTABLE, "already_running"):
        for outcome in result.slots.values():
            if outcome.action == action:
                result.action, result.version, result.error = action, outcome.version, outcome.error
                return


def _label(output: Any) -> Any:
    """The predicted class of a call: argmax over the last axis of the first output (its value if integer)."""
    array = np.asarray(output) if output is not None else None
    if array is None or array.size == 0 or array.dtype.kind not in "biuf":
        return None
    if array.dtype.kind in "biu":
        return array.reshape(-1).tolist() if array.size > 1 else int(array.reshape(-1)[0])
    label = np.argmax(array, axis=-1).reshape(-1)
    return label.tolist() if label.size > 1 else int(label[0])


def _is_correct(served: _Served, expected: Any) -> bool:
    if isinstance(expected, (bool, np.bool_)):
        return bool(expected)
    if isinstance(expected, (int, np.integer)):
        if served.label is None:
            raise ValueError("this model's first output has no class to compare a label with; send true/false")
        return served.label == int(expected) if isinstance(served.label, int) else \
            all(label == int(expected) for label in served.label)
    if isinstance(expected, list) and expected and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                        for v in expected) and isinstance(served.label, list):
        return served.label == [int(v) for v in expected]
    if served.outputs is None:
        raise ValueError("this call's outputs were too large to keep; send a class index or true/false")
    wanted = expected if isinstance(expected, Mapping) else {next(iter(served.outputs)): expected}
    try:
        return all(name in served.outputs and np.allclose(np.asarray(served.outputs[name], dtype=np.float64),
                                                          np.asarray(value, dtype=np.float64), rtol=1e-3, atol=1e-3)
                   for name, value in wanted.items())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected outputs cannot be compared with the model's: {exc}") from exc


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


__all__ = ["Agent", "CycleResult", "EnrollmentFailed", "Inference", "NoActiveModel", "SlotOutcome",
           "UnknownInference"]
