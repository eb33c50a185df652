"""Where the CLI finds its server and credentials: HOTSWAP_URL / HOTSWAP_TOKEN, else a profile `hotswap login` wrote.

Profiles live in one JSON file ($HOTSWAP_CONFIG, default ~/.config/hotswap/config.json, mode 0600):
`{"profiles": {"default": {"url", "token", "refresh", "username"}}}`. `token` is a JWT access token (with its
`refresh` token, renewed when it expires) or an API token `hs_…`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PROFILE = "default"


class ConfigError(Exception):
    """No server or no credentials, or an unreadable profile file."""


@dataclass
class Profile:
    name: str
    url: str = ""
    token: str = ""
    refresh: str = ""
    username: str = ""
    # The file the profile came from (None: the environment alone), where a renewed JWT is written back.
    saved: bool = False

    @property
    def authorization(self) -> str:
        """API tokens (`hs_…`) use the Token scheme, JWTs Bearer."""
        return f"Token {self.token}" if self.token.startswith("hs_") else f"Bearer {self.token}"


def config_path() -> Path:
    if explicit := os.environ.get("HOTSWAP_CONFIG"):
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "hotswap" / "config.json"


def _read() -> dict:
    path = config_path()
    if not path.exists():
        return {"profiles": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}): run `hotswap login` again.") from exc
    return data if isinstance(data.get("profiles"), dict) else {"profiles": {}}


def profile_load(name: str | None) -> Profile:
    """The profile `name` (HOTSWAP_PROFILE, else default), HOTSWAP_URL and HOTSWAP_TOKEN overriding its values."""
    name = name or os.environ.get("HOTSWAP_PROFILE") or DEFAULT_PROFILE
    stored = _read()["profiles"].get(name)
    profile = Profile(name=name, saved=stored is not None,
                      **{k: v for k, v in (stored or {}).items() if k in ("url", "token", "refresh", "username")})
    if url := os.environ.get("HOTSWAP_URL"):
        profile.url = url
    if token := os.environ.get("HOTSWAP_TOKEN"):
        profile.token, profile.refresh, profile.saved = token, "", False
    profile.url = profile.url.rstrip("/")
    if not profile.url:
        raise ConfigError("No server: set HOTSWAP_URL (and HOTSWAP_TOKEN), or run `hotswap login`"
                          + ("" if name == DEFAULT_PROFILE else f" --profile {name}") + ".")
    if not profile.token:
        raise ConfigError(f"No credentials for {profile.url}: set HOTSWAP_TOKEN, or run `hotswap login`.")
    return profile


def profile_save(profile: Profile) -> Path:
    """Writes the profile into the config file, readable by its owner only (0600)."""
    path = config_path()
    data = _read()
    fields = asdict(profile)
    data["profiles"][profile.name] = {k: fields[k] for k in ("url", "token", "refresh", "username")}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(temporary, 0o600)  # an older file of looser mode keeps its mode through O_CREAT
    os.replace(temporary, path)
    profile.saved = True
    return path
