"""Typed environment helpers: loud on bad values, `*_FILE` secrets, embedded defaults."""

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
