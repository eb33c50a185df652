"""Manifest checks a device makes before installing anything: pinned-key signature, freshness, order, semver."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hotswap_device.protocol import (
    ACTION_INSTALL,
    ACTION_REMOVE,
    INSTALL_MANIFEST_FIELDS,
    MANIFEST_ACTIONS,
    REMOVE_MANIFEST_FIELDS,
    canonical_bytes,
)

# Field → type per action; bool is checked before int because bool is a subclass of int in Python.
_FIELDS_BY_ACTION = {ACTION_INSTALL: INSTALL_MANIFEST_FIELDS, ACTION_REMOVE: REMOVE_MANIFEST_FIELDS}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


class ManifestRefused(Exception):
    """The device will not act on this manifest; `code` is a stable reason, the message says it for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PinnedKey:
    """The server's manifest public key as pinned at enrollment."""

    key_id: str
    public_key: bytes

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> PinnedKey:
        if info.get("algorithm", "ed25519") != "ed25519":
            raise ValueError(f"unsupported manifest key algorithm {info.get('algorithm')!r}")
        raw = base64.b64decode(info["public_key"], validate=True)
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        return cls(key_id=str(info.get("key_id", "")), public_key=raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def semver_key(version: str) -> tuple:
    """A sort key with semver 2.0 precedence: pre-releases sort before their release, build metadata is ignored."""
    match = _SEMVER.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a semantic version")
    major, minor, patch, prerelease = match.groups()
    if prerelease is None:
        # A release outranks any pre-release of the same MAJOR.MINOR.PATCH.
        return (int(major), int(minor), int(patch), 1, ())
    # Numeric identifiers rank below alphanumeric ones; a shorter list ranks below a longer one it prefixes.
    ids = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in prerelease.split("."))
    return (int(major), int(minor), int(patch), 0, ids)


def semver_compare(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` has lower, equal or higher precedence than `b`."""
    key_a, key_b = semver_key(a), semver_key(b)
    return (key_a > key_b) - (key_a < key_b)


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp without a timezone")
    return parsed


def verify_manifest(
    desired: Any,
    *,
    key: PinnedKey,
    device_id: str,
    last_sequence: int | None,
    running: tuple[str, str] | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The manifest of one entry of a check-in's `desired` list once every check passes; ManifestRefused otherwise.

    One slot at a time: `last_sequence` is the last sequence this device accepted for the manifest's model,
    `running` (model name, version) what that slot runs. The signature is checked first so nothing else in
    an unauthenticated manifest is trusted. A `remove` manifest carries no version, so only the signature,
    device, expiry and sequence apply to it.
    """
    now = now or datetime.now(UTC)
    if not isinstance(desired, dict) or not isinstance(desired.get("manifest"), dict):
        raise ManifestRefused("malformed", "The desired block carries no manifest object.")
    manifest = desired["manifest"]
    try:
        signature = base64.b64decode(desired.get("signature") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        signature = b""
    if not signature or not key.verify(signature, canonical_bytes(manifest)):
        raise ManifestRefused(
            "bad_signature",
            f"The manifest signature does not verify with the pinned key {key.key_id or '(no id)'}"
            f" (manifest says key {desired.get('key_id') or '(none)'}).",
        )
    fields = _FIELDS_BY_ACTION.get(manifest.get("action"))  # type: ignore[arg-type]
    if fields is None:
        raise ManifestRefused("malformed", f"The manifest's action {manifest.get('action')!r} is not one of "
                                           f"{', '.join(MANIFEST_ACTIONS)}.")
    for name, kind in fields.items():
        value = manifest.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestRefused("malformed", f"The manifest field {name!r} is missing or not a {kind.__name__}.")
    if manifest["device_id"] != device_id:
        raise ManifestRefused(
            "wrong_device", f"The manifest is for device {manifest['device_id']!r}, this device is {device_id!r}."
        )
    if manifest["sequence"] < 0 or (fields is INSTALL_MANIFEST_FIELDS and (
            not _SHA256.match(manifest["sha256"]) or manifest["size"] < 0)):
        raise ManifestRefused("malformed", "The manifest's sha256, size or sequence is not valid.")
    try:
        expires_at = parse_time(manifest["expires_at"])
    except ValueError:
        raise ManifestRefused("malformed", f"expires_at {manifest['expires_at']!r} is not a time.") from None
    if expires_at <= now:
        raise ManifestRefused("expired", f"The manifest expired at {manifest['expires_at']}.")
    if last_sequence is not None and manifest["sequence"] < last_sequence:
        raise ManifestRefused(
            "old_sequence",
            f"The manifest's sequence {manifest['sequence']} is lower than the last accepted ({last_sequence})"
            f" for {manifest['model']}.",
        )
    if manifest["action"] == ACTION_REMOVE:
        return manifest
    try:
        semver_key(manifest["version"])
    except ValueError:
        raise ManifestRefused("malformed", f"The manifest's version {manifest['version']!r} is not semver.") from None
    if running and running[0] == manifest["model"] and not manifest["rollback"]:
        try:
            older = semver_compare(manifest["version"], running[1]) < 0
        except ValueError:
            older = False  # a running version that is not semver cannot be ordered; nothing to protect
        if older:
            raise ManifestRefused(
                "downgrade",
                f"Version {manifest['version']} is older than the running {running[1]} and the manifest is not a"
                " rollback.",
            )
    return manifest
