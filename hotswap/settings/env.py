"""Typed environment helpers: loud on bad values, `*_FILE` secrets, embedded defaults."""

import ipaddress
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# Where the embedded defaults keep their data (database, broker, artifacts).
VAR_DIR = Path(environ.Env().str("HOTSWAP_VAR_DIR", default=str(BASE_DIR / "var")))

# FileAwareEnv reads SECRET_KEY from SECRET_KEY_FILE when that is set (Docker/K8s secrets).
env = environ.FileAwareEnv()


def log_format(default: str) -> str:
    """LOG_FORMAT, json or console; read here for the settings and for gunicorn's master, which has none."""
    value = env.str("LOG_FORMAT", default=default)
    if value not in ("json", "console"):
        raise environ.ImproperlyConfigured(f"LOG_FORMAT must be json or console, not {value!r}")
    return value


def networks(name: str, default: list[str]) -> list[str]:
    """A comma-separated list of CIDRs (or single addresses), each checked now rather than at the first request."""
    values = [value.strip() for value in env.list(name, default=default) if value.strip()]
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise environ.ImproperlyConfigured(f"{name}: {exc}") from None
    return values
