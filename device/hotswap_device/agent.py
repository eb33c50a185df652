"""The agent loop: enroll once, check in, act on the desired state (verify, download, swap) and report."""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from hotswap_device import health, tracing
from hotswap_device.client import ApiError, CheckinAnswer, ServerClient, TransientError
from hotswap_device.download import DownloadInterrupted, IntegrityError, download, verify_file
from hotswap_device.manifest import ManifestRefused, PinnedKey, verify_manifest
from hotswap_device.metrics import MetricsRecorder
from hotswap_device.protocol import MAX_ITEMS
from hotswap_device.runtime import (
    InferCallback,
    InferenceWorkers,
    LoadedModel,
    ModelLoadError,
    ModelRuntime,
    load_model,
)
from hotswap_device.store import AgentState, DataDir, ModelRecord

logger = logging.getLogger(__name__)

MAX_RESENDS = 4
# Reports waiting for the server are bounded so a device offline for weeks cannot fill its disk.
MAX_QUEUED_INSTALLS = 500
MAX_QUEUED_METRICS = 2000
_ITEM_FIELD = re.compile(r"^(installs|metrics)\[(\d+)\]")
_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_DEVICE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


class EnrollmentFailed(Exception):
    """The server refused the enrollment (bad key, device exists, invalid data): a person must act."""


class InstallFailed(Exception):
    """The install cannot succeed as it stands (no space, unsupported format)."""


@dataclass
class CycleResult:
    """What one check-in cycle did; `next_delay` is when the next one is due (seconds)."""

    status: str  # ok, not_modified, backoff, rejected, decommissioned (final: stop the agent)
    action: str = "none"  # none, installed, already_running, refused, failed, deferred
    version: str | None = None
    error: str = ""
    next_delay: float = 60.0
    sent_installs: int = 0
    sent_metrics: int = 0
    dropped: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    commit: bool  # whether the answer's ETag may be kept: only once the desired state has been dealt with
    action: str
    version: str | None = None
    error: str = ""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_device_id() -> str:
    host = _DEVICE_ID_UNSAFE.sub("-", socket.gethostname()).strip("-._:")[:50] or "device"
    return f"{host}-{secrets.token_hex(3)}"


def _text(value: Any, fallback: str = "unknown") -> str:
    return value if isinstance(value, str) and 0 < len(value) <= 64 else fallback


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
        inference_threads: int = 0,
        inference_interval_seconds: float = 0.0,
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
        self.runtime = ModelRuntime(grace_seconds=grace_seconds, infer=infer, recorder=self.metrics.record)
        self.infer = infer
        self.warmup_runs = warmup_runs
        self.session_threads = session_threads
        self.download_attempts = download_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self._failures = 0
        self._sent = [0, 0]  # installs and metric windows acknowledged during the current cycle
        self._workers = InferenceWorkers(self.runtime, threads=inference_threads,
                                         interval_seconds=inference_interval_seconds) if inference_threads else None
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
        body: dict[str, Any] = {"enrollment_key": self.enroll_key, "device_id": device_id,
                                "capabilities": self.capabilities or self._capabilities()}
        body.update({k: v for k, v in self.profile.items() if v})
        try:
            answer = self.client.enroll(body)
        except ApiError as exc:
            raise EnrollmentFailed(f"enrollment refused: {exc}") from exc
        try:
            key = PinnedKey.from_info(answer["manifest_public_key"])
            credential = str(answer["credential"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EnrollmentFailed(f"the enrollment answer is not usable: {exc}") from exc
        self.store.public_key = answer["manifest_public_key"]
        self.store.identity = {"device_id": answer.get("device_id") or device_id,
                               "checkin_url": answer.get("checkin_url") or "/api/v1/devices/checkin"}
        self._set_poll_interval(answer.get("poll_interval_seconds"))
        # The credential last: its presence is what marks the device as enrolled.
        self.store.credential = credential
        self._key = key
        self._save()
        logger.info("enrolled as %s; manifest key %s pinned", self.device_id, key.key_id)

    def _capabilities(self) -> dict[str, Any]:
        try:
            stats = os.statvfs(self.store.path)
            storage_gb: int | None = int(stats.f_blocks * stats.f_frsize // 10**9)
        except (OSError, AttributeError):
            storage_gb = None
        return {"cpu_cores": os.cpu_count(), "memory_mb": health.memory_mb(), "storage_gb": storage_gb, "gpu": None}

    # --- the cycle ---------------------------------------------------------------------------

    def run_once(self, *, now: datetime | None = None) -> CycleResult:
        """One cycle: send queued reports with a check-in, act on the answer, send the new reports at once."""
        try:
            self.enroll()
        except TransientError as exc:
            return self._backoff(exc)
        self._queue_windows()
        dropped: list[str] = []
        self._sent = [0, 0]
        try:
            answer = self._checkin(dropped)
        except TransientError as exc:
            self._save()
            return self._backoff(exc, dropped=dropped)
        except ApiError as exc:
            self._save()
            if exc.status == 403 and exc.code == "DEVICE_DECOMMISSIONED":
                # Final (PROTOCOL §2): neither a retry nor a new enrollment would be answered otherwise.
                logger.error("the server says this device is decommissioned (%s); stopping", exc)
                return CycleResult(status="decommissioned", error=str(exc), next_delay=0.0, dropped=dropped)
            if exc.status in (401, 403):
                logger.error("the server locked this device out (%s); an operator must re-issue a credential", exc)
            return self._backoff(exc, status="rejected", dropped=dropped)
        self._failures = 0
        result = CycleResult(status="ok" if answer.status == 200 else "not_modified", dropped=dropped)
        if answer.status == 200 and answer.body is not None:
            self._set_poll_interval(answer.body.get("poll_interval_seconds"))
            outcome = self._act(answer.body.get("desired"), traceparent=answer.traceparent, now=now)
            if outcome.commit:
                self.state.etag = answer.etag
            result.action, result.version, result.error = outcome.action, outcome.version, outcome.error
        self._save()
        if self.state.pending_installs:
            self._flush_reports(result)
        result.sent_installs, result.sent_metrics = self._sent
        # Up to 10% later than asked, never earlier: spreads a fleet that booted together.
        result.next_delay = self.state.poll_interval_seconds * random.uniform(1.0, 1.1)
        return result

    def _flush_reports(self, result: CycleResult) -> None:
        # Install results go out at once rather than a poll interval later: a rollout is waiting on them.
        try:
            answer = self._checkin(result.dropped)
        except (TransientError, ApiError) as exc:
            logger.warning("reports stay queued for the next check-in: %s", exc)
        else:
            if answer.status == 200 and answer.body is not None:
                # Not acted upon here (and the ETag is not kept), so the next cycle sees this answer again.
                self._set_poll_interval(answer.body.get("poll_interval_seconds"))
        self._save()

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
                    logger.warning("report queue full: dropping the oldest report %s", _summary(item))
                del queue[: len(queue) - cap]

    def flush_metrics(self) -> int:
        """Closes the open metric window now and queues it (tests, shutdown); returns how many were queued."""
        windows = self.metrics.flush()
        self._queue_windows(windows)
        self._save()
        return len(windows)

    def _running(self) -> dict[str, str] | None:
        current = self.state.current
        if current is None or self.runtime.active is None:
            return None
        return {"model": current.name, "version": current.version, "sha256": current.sha256}

    def _checkin(self, dropped: list[str]) -> CheckinAnswer:
        """Sends a check-in with the queued reports; on 400 drops exactly the named items and resends at once."""
        credential = self.store.credential
        assert credential is not None
        path = self.store.identity.get("checkin_url") or "/api/v1/devices/checkin"
        limit, send_health = MAX_ITEMS, True
        for _ in range(MAX_RESENDS):
            installs = self.state.pending_installs[:limit]
            metrics = self.state.pending_metrics[:limit]
            body: dict[str, Any] = {"running": self._running(), "installs": installs, "metrics": metrics}
            if send_health:
                body["health"] = health.snapshot(self.store.path)
            try:
                answer = self.client.checkin(path=path, credential=credential, body=body, etag=self.state.etag)
            except ApiError as exc:
                if exc.status == 413 and limit > 1:
                    limit = max(1, limit // 2)
                    continue
                if exc.status != 400:
                    raise
                fixed, send_health = self._drop_named(exc, installs, metrics, dropped, send_health)
                if not fixed:
                    raise
                continue
            # Acknowledged (200 or 304: the server stores reports either way).
            del self.state.pending_installs[: len(installs)]
            del self.state.pending_metrics[: len(metrics)]
            self._sent[0] += len(installs)
            self._sent[1] += len(metrics)
            return answer
        raise TransientError(f"the check-in was still refused after {MAX_RESENDS} attempts")

    def _drop_named(
        self,
        exc: ApiError,
        installs: list[dict[str, Any]],
        metrics: list[dict[str, Any]],
        dropped: list[str],
        send_health: bool,
    ) -> tuple[bool, bool]:
        """Removes the queued items a 400 names; (whether the next attempt can differ, whether to send health)."""
        batch = {"installs": installs, "metrics": metrics}
        doomed: dict[str, set[int]] = {"installs": set(), "metrics": set()}
        reasons: dict[tuple[str, int], list[str]] = {}
        fixed = False
        for detail in exc.details:
            where, message = str(detail.get("field") or ""), str(detail.get("message") or "")
            match = _ITEM_FIELD.match(where)
            if match and int(match.group(2)) < len(batch[match.group(1)]):
                doomed[match.group(1)].add(int(match.group(2)))
                reasons.setdefault((match.group(1), int(match.group(2))), []).append(f"{where}: {message}")
            elif where.startswith("health") and send_health:
                logger.warning("the server refused our health figures (%s: %s); sending the check-in without them",
                               where, message)
                send_health, fixed = False, True
            else:
                logger.error("the server refused the check-in for a reason no report explains: %s: %s",
                             where or "body", message)
        for kind in ("installs", "metrics"):
            queue: list[dict[str, Any]] = getattr(self.state, f"pending_{kind}")
            for index in sorted(doomed[kind], reverse=True):
                item = batch[kind][index]
                logger.warning("dropping %s[%d] %s: %s", kind, index, _summary(item),
                               "; ".join(reasons[(kind, index)]))
                dropped.append(f"{kind}[{index}]")
                # The batch is the head of the queue, so a batch index is a queue index.
                del queue[index]
                fixed = True
        return fixed, send_health

    # --- acting on the desired state ------------------------------------------------------------

    def _act(self, desired: Any, *, traceparent: str, now: datetime | None) -> _Outcome:
        if desired is None:
            return _Outcome(commit=True, action="none")
        assert self._key is not None and self.device_id is not None
        current = self.state.current if self.runtime.active is not None else None
        try:
            manifest = verify_manifest(
                desired, key=self._key, device_id=self.device_id, last_sequence=self.state.last_sequence,
                running=(current.name, current.version) if current else None, now=now,
            )
        except ManifestRefused as refusal:
            raw = desired.get("manifest") if isinstance(desired, dict) else None
            return self._reject(raw if isinstance(raw, dict) else {}, "refused", refusal.code, str(refusal),
                                traceparent)
        sequence = manifest["sequence"]
        self.state.last_sequence = max(self.state.last_sequence or 0, sequence)
        if current and (current.name, current.version, current.sha256) == (
            manifest["model"], manifest["version"], manifest["sha256"]
        ):
            if current.sequence != sequence:
                # Desired again under a new sequence (e.g. a rollout picked it): say it is active for that one.
                current.sequence = sequence
                self._report(manifest, "active", duration_ms=0, traceparent=traceparent)
            return _Outcome(commit=True, action="already_running", version=manifest["version"])
        if self._already_rejected(manifest, "failed"):
            return _Outcome(commit=True, action="failed", version=manifest["version"],
                            error="failed before; waiting for a new desired state")
        return self._install(manifest, traceparent)

    def _rejection_key(self, manifest: dict[str, Any], code: str) -> dict[str, Any]:
        return {"sequence": manifest.get("sequence"), "model": manifest.get("model"),
                "version": manifest.get("version"), "sha256": manifest.get("sha256"), "code": code}

    def _already_rejected(self, manifest: dict[str, Any], code: str) -> bool:
        rejected = self.state.rejected or {}
        if code == "failed":
            return rejected.get("code", "").startswith("failed") and all(
                rejected.get(k) == manifest.get(k) for k in ("sequence", "model", "version", "sha256"))
        return rejected == self._rejection_key(manifest, code)

    def _reject(self, manifest: dict[str, Any], status: str, code: str, error: str, traceparent: str) -> _Outcome:
        full_code = code if status == "refused" else f"failed:{code}"
        version = manifest.get("version") if isinstance(manifest.get("version"), str) else None
        if self._already_rejected(manifest, full_code):
            # A re-issued copy (fresh URL, same content): reported once already.
            return _Outcome(commit=True, action=status, version=version, error=error)
        logger.warning("%s manifest #%s (%s %s): %s", status, manifest.get("sequence"), manifest.get("model"),
                       manifest.get("version"), error)
        self._report(manifest, status, error=error, traceparent=traceparent)
        self.state.rejected = self._rejection_key(manifest, full_code)
        return _Outcome(commit=True, action=status, version=version, error=error)

    def _report(
        self,
        manifest: dict[str, Any],
        status: str,
        *,
        duration_ms: int | None = None,
        error: str = "",
        traceparent: str = "",
    ) -> None:
        sequence = manifest.get("sequence")
        report: dict[str, Any] = {
            "model": _text(manifest.get("model")), "version": _text(manifest.get("version")), "status": status,
            "at": _now_iso(), "error": error[:2000],
        }
        if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence >= 0:
            report["sequence"] = sequence
        if duration_ms is not None:
            report["duration_ms"] = max(0, int(duration_ms))
        if _TRACEPARENT.match(traceparent or ""):
            report["traceparent"] = traceparent
        self.state.pending_installs.append(report)

    def _install(self, manifest: dict[str, Any], traceparent: str) -> _Outcome:
        name, version = manifest["model"], manifest["version"]
        attributes = {"device.id": self.device_id, "model.id": f"{name}-{version}", "model.name": name,
                      "model.version": version, "manifest.sequence": manifest["sequence"],
                      "manifest.rollback": bool(manifest.get("rollback"))}
        # A child of the answer's traceparent (the distribution's trace); the reports then carry this
        # span's context, so the server's device.update links to the swap it describes.
        with tracing.span("model.swap", traceparent=traceparent, attributes=attributes) as swap:
            outcome = self._swap_in(manifest, tracing.traceparent_of(swap, traceparent))
            tracing.annotate(swap, **{"install.outcome": outcome.action})
            if outcome.action == "failed":
                tracing.failed(swap, outcome.error)
            return outcome

    def _swap_in(self, manifest: dict[str, Any], traceparent: str) -> _Outcome:
        started = time.monotonic()
        name, version, sha256 = manifest["model"], manifest["version"], manifest["sha256"]
        try:
            if manifest.get("format", "onnx") != "onnx":
                raise InstallFailed(f"format {manifest.get('format')!r} is not supported by this agent (ONNX only)")
            path = self._local_copy(manifest) or self._download(manifest)
        except DownloadInterrupted as exc:
            # Not a failure yet: the ETag is not kept, so the next check-in brings the manifest (and a fresh URL)
            # again and the download resumes where it stopped.
            logger.warning("download of %s %s interrupted, will resume: %s", name, version, exc)
            return _Outcome(commit=False, action="deferred", version=version, error=str(exc))
        except IntegrityError as exc:
            return self._reject(manifest, "failed", "integrity", str(exc), traceparent)
        except (InstallFailed, OSError) as exc:
            return self._reject(manifest, "failed", "install", str(exc), traceparent)
        try:
            model = load_model(path, name=name, version=version, sha256=sha256, warmup_runs=self.warmup_runs,
                               infer=self.infer, session_threads=self.session_threads)
        except ModelLoadError as exc:
            if str(path) not in self._kept_paths():
                path.unlink(missing_ok=True)
            return self._reject(manifest, "failed", "load", str(exc), traceparent)
        self._report(manifest, "installed", duration_ms=_ms_since(started), traceparent=traceparent)
        self.runtime.swap(model)
        self._report(manifest, "active", duration_ms=_ms_since(started), traceparent=traceparent)
        logger.info("%s %s is active (manifest #%s, %d ms)", name, version, manifest["sequence"],
                    _ms_since(started))
        old = self.state.current
        self.state.current = ModelRecord(name=name, version=version, sha256=sha256, path=str(path),
                                         size=manifest["size"], sequence=manifest["sequence"])
        # Keep exactly one previous model, so the likely rollback needs no download.
        self.state.previous = old if old is not None and old.path != str(path) else self.state.previous
        if self.state.previous is not None and self.state.previous.path == str(path):
            self.state.previous = None
        self._save()
        self._prune_models()
        return _Outcome(commit=True, action="installed", version=version)

    def _kept_paths(self) -> set[str]:
        return {record.path for record in (self.state.current, self.state.previous) if record is not None}

    def _prune_models(self) -> None:
        kept = self._kept_paths()
        for entry in self.store.models.iterdir():
            if str(entry) not in kept and entry.suffix in (".onnx", ".partial"):
                logger.info("removing %s (neither the active nor the previous model)", entry.name)
                entry.unlink(missing_ok=True)

    def _local_copy(self, manifest: dict[str, Any]) -> Path | None:
        """A file already on disk with the manifest's sha256 (the previous model, for a rollback)."""
        candidates = [Path(r.path) for r in (self.state.current, self.state.previous)
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

    # --- start-up, inference threads, shutdown ------------------------------------------------

    def _restore(self) -> None:
        current = self.state.current
        if current is None:
            return
        path = Path(current.path)
        try:
            verify_file(path, size=current.size or path.stat().st_size, sha256=current.sha256)
            model: LoadedModel = load_model(path, name=current.name, version=current.version,
                                            sha256=current.sha256, warmup_runs=self.warmup_runs, infer=self.infer,
                                            session_threads=self.session_threads)
        except (OSError, IntegrityError, ModelLoadError) as exc:
            logger.error("cannot restore %s %s from %s (%s); running nothing until the server says what to run",
                         current.name, current.version, path, exc)
            self.state.current = None
            self._save()
            return
        self.runtime.swap(model)
        logger.info("restored %s %s", current.name, current.version)

    def start_inference(self) -> None:
        if self._workers is not None:
            self._workers.start()

    def stop_inference(self) -> None:
        if self._workers is not None:
            self._workers.stop()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Cycles until `stop_event` is set or the device is decommissioned, with inference threads running.

        EnrollmentFailed ends it too, raised.
        """
        self.start_inference()
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
            self.stop_inference()
            # The last partial window is kept and sent after the restart.
            self.flush_metrics()

    def _save(self) -> None:
        self.store.save_state(self.state)

    def close(self) -> None:
        self.stop_inference()
        self.runtime.close()
        self.client.close()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _summary(item: dict[str, Any]) -> str:
    if "status" in item:
        return f"install report {item.get('model')} {item.get('version')} {item.get('status')}"
    return (f"metric window {item.get('model')} {item.get('version')} {item.get('window_start')}"
            f"..{item.get('window_end')} ({item.get('inference_count')} calls)")
