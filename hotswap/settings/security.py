"""Security settings: production or embedded, the secret key, TLS and cookies, the proxies believed about clients.

HOTSWAP_ENV=production marks every deployment other than the embedded one of `make run` / runstack: it
refuses to start without a strong SECRET_KEY (or DEBUG on) and turns on HTTPS redirects, HSTS and secure
cookies, so that `manage.py check --deploy` is clean. Without it the secret key is generated on the first
start and kept in HOTSWAP_VAR_DIR, like the manifest signing key.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import zlib
from collections import Counter
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from hotswap.lib.keyfiles import generated_secret
from hotswap.settings.env import VAR_DIR, env, networks

ENVIRONMENTS = ("development", "production")
HOTSWAP_ENV = env.str("HOTSWAP_ENV", default="development")
if HOTSWAP_ENV not in ENVIRONMENTS:
    raise ImproperlyConfigured(f"HOTSWAP_ENV must be development or production, not {HOTSWAP_ENV!r}")
PRODUCTION = HOTSWAP_ENV == "production"

DEBUG = env.bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off with HOTSWAP_ENV=production: unset DEBUG or set DEBUG=false.")

SECRET_KEY_MIN_LENGTH = 50  # Django's own deploy check (security.W009) asks for as much
SECRET_KEY_MIN_BITS = 128
# SHA-256 of keys that are public: the development default committed to this repository until issue 13.
KNOWN_INSECURE_KEY_SHA256 = {"b262782247264065a105a323519485991689f2beec9d84bb220f271f4d3408f4"}
SECRET_KEY_HELP = ("Set SECRET_KEY, or SECRET_KEY_FILE to the path of a file holding it, to 50 or more random "
                   "characters, e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe(50))'")


def secret_key_bits(key: str) -> float:
    """A rough upper bound of the key's entropy: the smaller of its character statistics and its compressed size.

    Character statistics miss repetition ("password" seven times), compression misses a small alphabet
    ("abab..."); a random key of 50 characters scores about 200 bits on both.
    """
    counts = Counter(key)
    per_char = -sum(n / len(key) * math.log2(n / len(key)) for n in counts.values()) if key else 0.0
    compressed = 8 * (len(zlib.compress(key.encode(), 9)) - len(zlib.compress(b"", 9)))
    return min(per_char * len(key), compressed)


def secret_key_weakness(key: str) -> str | None:
    """Why this key must not sign anything, or None when it will do."""
    if hashlib.sha256(key.encode()).hexdigest() in KNOWN_INSECURE_KEY_SHA256:
        return "a known key, once committed to HotSwap's repository: anyone can sign tokens with it"
    if key.startswith("django-insecure-"):
        return "marked insecure by Django (it starts with 'django-insecure-')"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"{len(key)} characters long; it needs at least {SECRET_KEY_MIN_LENGTH}"
    if secret_key_bits(key) < SECRET_KEY_MIN_BITS:
        return "too predictable (repeated or from too few characters)"
    return None


def secret_key_select(configured: str, *, production: bool, generated_path: Path) -> str:
    """The configured key if it is strong; else one generated once into generated_path (never in production)."""
    if configured:
        weakness = secret_key_weakness(configured)
        if weakness:
            raise ImproperlyConfigured(f"The SECRET_KEY is {weakness}. {SECRET_KEY_HELP}")
        return configured
    if production:
        raise ImproperlyConfigured(f"HOTSWAP_ENV=production needs a secret key. {SECRET_KEY_HELP}")
    return generated_secret(generated_path, lambda: secrets.token_urlsafe(SECRET_KEY_MIN_LENGTH))


def _configured_secret_key() -> str:
    try:
        # FileAwareEnv: SECRET_KEY_FILE wins over SECRET_KEY. A file's trailing newline is not part of the key.
        return env.str("SECRET_KEY", default="").strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"SECRET_KEY_FILE cannot be read: {exc}. {SECRET_KEY_HELP}") from None


# Signs sessions, JWTs (simplejwt's SIGNING_KEY defaults to it), password reset links and local download links.
SECRET_KEY = secret_key_select(_configured_secret_key(), production=PRODUCTION, generated_path=VAR_DIR / "secret-key")

# TLS is terminated by a proxy in front (README, "Production configuration"); it must set X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
# Probes and Prometheus call from inside the network, often over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=PRODUCTION)

# Proxies (CIDRs) whose X-Forwarded-For is believed; none by default: the peer is the client
# (hotswap.lib.clientip). Throttles, logs and anything else keyed on a client's address use that one answer.
TRUSTED_PROXIES = networks("TRUSTED_PROXIES", default=[])
