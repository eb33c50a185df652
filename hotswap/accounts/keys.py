"""Raw API token keys: `hs_<prefix>_<secret>`, made, split and hashed in one place."""

import hashlib
import re
import secrets

KEY_TAG = "hs"
PREFIX_LENGTH = 8
PREFIX_PATTERN = rf"^[0-9a-f]{{{PREFIX_LENGTH}}}$"
HASH_PATTERN = r"^[0-9a-f]{64}$"

# The prefix is hex so the first "_" after it always ends it; the secret may contain "_" itself.
_KEY = re.compile(rf"^{KEY_TAG}_(?P<prefix>[0-9a-f]{{{PREFIX_LENGTH}}})_(?P<secret>[A-Za-z0-9_-]{{20,128}})$")


def prefix_make() -> str:
    return secrets.token_hex(PREFIX_LENGTH // 2)


def secret_make() -> str:
    return secrets.token_urlsafe(32)


def key_join(prefix: str, secret: str) -> str:
    return f"{KEY_TAG}_{prefix}_{secret}"


def key_split(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    match = _KEY.match(key)
    return (match["prefix"], match["secret"]) if match else None


def secret_hash(secret: str) -> str:
    # A plain SHA-256 is enough: the secret has 256 bits of entropy, so there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()
