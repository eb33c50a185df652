"""Device credentials and enrollment keys: `<kind>_<prefix>_<secret>`, stored as SHA-256 hashes."""

import hashlib
import hmac
import secrets
from typing import NamedTuple

DEVICE_KIND = "hsd"
ENROLLMENT_KIND = "hse"


class NewSecret(NamedTuple):
    raw: str  # shown once, never stored
    prefix: str
    key_hash: str


def secret_hash(secret: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is enough (no bcrypt on the check-in path).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(kind: str) -> NewSecret:
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    return NewSecret(raw=f"{kind}_{prefix}_{secret}", prefix=prefix, key_hash=secret_hash(secret))


def split_secret(raw: str, kind: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed raw key of the given kind, else None."""
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), key_hash)
