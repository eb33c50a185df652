"""Signed manifests (TUF-like): what a device should run, signed with the server's Ed25519 key."""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from hotswap.lib.keyfiles import generated_secret
from hotswap_device.protocol import canonical_bytes


@lru_cache(maxsize=1)
def signing_key() -> Ed25519PrivateKey:
    """MANIFEST_SIGNING_KEY (base64 seed), else the key file, generated once for the embedded setup."""
    if settings.MANIFEST_SIGNING_KEY:
        return _key_from_base64(settings.MANIFEST_SIGNING_KEY, "MANIFEST_SIGNING_KEY")
    path = Path(settings.MANIFEST_SIGNING_KEY_PATH)
    seed = generated_secret(path, lambda: base64.b64encode(os.urandom(32)).decode())
    return _key_from_base64(seed, str(path))


def _key_from_base64(value: str, where: str) -> Ed25519PrivateKey:
    try:
        seed = base64.b64decode(value, validate=True)
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{where} must be the base64 of a 32-byte Ed25519 seed") from exc


@lru_cache(maxsize=1)
def public_key_info() -> dict:
    raw = signing_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "key_id": hashlib.sha256(raw).hexdigest()[:16],
        "algorithm": "ed25519",
        "public_key": base64.b64encode(raw).decode(),
    }


def sign(manifest: dict) -> dict:
    """The `desired` block of a check-in answer: the manifest, its signature and the key id."""
    signature = signing_key().sign(canonical_bytes(manifest))
    return {"manifest": manifest, "signature": base64.b64encode(signature).decode(),
            "key_id": public_key_info()["key_id"]}
