"""The agent's data dir: credential, pinned key, identity and state.json, each written atomically and 0600."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class ModelRecord:
    """A model file on disk the agent runs or keeps for a rollback."""

    name: str
    version: str
    sha256: str
    path: str
    size: int = 0
    sequence: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelRecord | None:
        if not data:
            return None
        known = {k: data[k] for k in ("name", "version", "sha256", "path", "size", "sequence") if k in data}
        return cls(**known)


@dataclass
class SlotState:
    """One model slot: what runs, the version kept on disk for an instant rollback, and its own sequence."""

    current: ModelRecord | None = None
    previous: ModelRecord | None = None
    # The highest sequence accepted for this model: a manifest with a lower one is refused.
    last_sequence: int | None = None
    # Set once the slot's removal (at last_sequence) is done and reported.
    removed: bool = False
    # The last manifest refused or failed for this slot, so re-issued copies of it are not reported again.
    rejected: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlotState:
        return cls(current=ModelRecord.from_dict(data.get("current")),
                   previous=ModelRecord.from_dict(data.get("previous")),
                   last_sequence=data.get("last_sequence"), removed=bool(data.get("removed")),
                   rejected=data.get("rejected"))


STATE_VERSION = 2


@dataclass
class AgentState:
    """Everything the agent must remember across restarts besides its secrets."""

    slots: dict[str, SlotState] = field(default_factory=dict)  # model name → its slot
    etag: str | None = None
    poll_interval_seconds: float = 60.0
    # Reports not yet acknowledged by the server: kept on disk so a restart does not lose them.
    pending_installs: list[dict[str, Any]] = field(default_factory=list)
    pending_metrics: list[dict[str, Any]] = field(default_factory=list)

    def slot(self, model: str) -> SlotState:
        return self.slots.setdefault(model, SlotState())

    def to_dict(self) -> dict[str, Any]:
        return {"state_version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        if "slots" not in data:
            return cls._from_single_slot(data)
        return cls(
            slots={str(name): SlotState.from_dict(slot) for name, slot in (data.get("slots") or {}).items()},
            etag=data.get("etag"),
            poll_interval_seconds=float(data.get("poll_interval_seconds") or 60.0),
            pending_installs=list(data.get("pending_installs") or []),
            pending_metrics=list(data.get("pending_metrics") or []),
        )

    @classmethod
    def _from_single_slot(cls, data: dict[str, Any]) -> AgentState:
        """An agent of protocol 1 kept one model: it becomes the slot of that model, its sequence that slot's
        (the server's migration does the same with the device's desired state). Its ETag belongs to the old
        protocol's answer, so it is dropped and the first check-in gets the whole desired set."""
        current = ModelRecord.from_dict(data.get("current"))
        previous = ModelRecord.from_dict(data.get("previous"))
        state = cls(poll_interval_seconds=float(data.get("poll_interval_seconds") or 60.0),
                    pending_installs=list(data.get("pending_installs") or []),
                    pending_metrics=list(data.get("pending_metrics") or []))
        model = (current or previous).name if (current or previous) else None
        if model is not None:
            rejected = data.get("rejected")
            state.slots[model] = SlotState(
                current=current,
                previous=previous if previous is not None and previous.name == model else None,
                last_sequence=data.get("last_sequence"),
                rejected=rejected if isinstance(rejected, dict) and rejected.get("model") == model else None)
        return state


class DataDir:
    """Files under the data dir; secrets and state are only readable by the agent's user."""

    CREDENTIAL = "credential"
    PUBLIC_KEY = "manifest_public_key.json"
    IDENTITY = "device.json"
    STATE = "state.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Absolute, because state.json records model paths and the agent may restart from another cwd.
        self.path = Path(path).resolve()
        self.models = self.path / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        self._saved_state: str | None = None

    def _write(self, name: str, text: str) -> None:
        target = self.path / name
        temporary = target.with_name(f".{name}.tmp")
        # Created 0600 from the start (not chmod-ed afterwards), then renamed over: never a half-written
        # or world-readable credential, even if the device loses power mid-write.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def _read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    @property
    def credential(self) -> str | None:
        text = self._read(self.CREDENTIAL)
        return text.strip() if text else None

    @credential.setter
    def credential(self, value: str) -> None:
        self._write(self.CREDENTIAL, value + "\n")

    @property
    def public_key(self) -> dict[str, Any] | None:
        text = self._read(self.PUBLIC_KEY)
        return json.loads(text) if text else None

    @public_key.setter
    def public_key(self, value: dict[str, Any]) -> None:
        self._write(self.PUBLIC_KEY, json.dumps(value, indent=2))

    @property
    def identity(self) -> dict[str, Any]:
        text = self._read(self.IDENTITY)
        return json.loads(text) if text else {}

    @identity.setter
    def identity(self, value: dict[str, Any]) -> None:
        self._write(self.IDENTITY, json.dumps(value, indent=2))

    def load_state(self) -> AgentState:
        text = self._read(self.STATE)
        self._saved_state = text
        return AgentState.from_dict(json.loads(text)) if text else AgentState()

    def save_state(self, state: AgentState) -> None:
        text = json.dumps(state.to_dict(), indent=1)
        # Most polls change nothing; skipping identical writes spares a device's flash storage.
        if text != self._saved_state:
            self._write(self.STATE, text)
            self._saved_state = text

    def model_path(self, name: str, version: str) -> Path:
        return self.models / f"{_safe(name)}-{_safe(version)}.onnx"

    def partial_path(self, name: str, version: str) -> Path:
        return self.models / f"{_safe(name)}-{_safe(version)}.partial"

    def partials_of(self, name: str) -> list[Path]:
        """Unfinished downloads of any version of model `name` (versions start with a digit)."""
        return list(self.models.glob(f"{_safe(name)}-[0-9]*.partial"))


def _safe(part: str) -> str:
    # Names come from a signed manifest, but a file name must never climb out of models/ whatever they say.
    return _UNSAFE.sub("_", part).lstrip(".") or "_"
