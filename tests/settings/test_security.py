"""hotswap.settings.security: no committed or weak SECRET_KEY anywhere, a generated one for the embedded setup,
and a production configuration that `manage.py check --deploy` finds nothing wrong with."""

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from hotswap.settings.env import BASE_DIR
from hotswap.settings.security import secret_key_select, secret_key_weakness
from models_app.storage import SIGNED_URL_SALT

# The development key committed to the repository until issue 13: public, so anyone could sign with it.
OLD_COMMITTED_KEY = "hotswap-insecure-dev-key-change-me-in-production"
# README, "Production configuration": what a production deployment sets (the secret itself from a file).
PRODUCTION_ENV = {"HOTSWAP_ENV": "production", "ALLOWED_HOSTS": "hotswap.example.com",
                  "CSRF_TRUSTED_ORIGINS": "https://hotswap.example.com", "BEHIND_TLS_PROXY": "true",
                  "TRUSTED_PROXIES": "10.0.0.0/8"}


def start(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Loads the production settings module in a fresh process with only this environment (and the run's servers)."""
    child_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
                 "DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"],
                 "HOTSWAP_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "hotswap.settings.base", **env}
    command = args or ("-c", "from django.conf import settings; print(settings.SECRET_KEY)")
    return subprocess.run([sys.executable, *command], cwd=BASE_DIR, env=child_env, capture_output=True, text=True,
                          timeout=120)


def test_it_refuses_to_start_in_production_without_a_secret_key(tmp_path):
    started = start(tmp_path, **PRODUCTION_ENV)

    assert started.returncode != 0
    assert "ImproperlyConfigured: HOTSWAP_ENV=production needs a secret key. Set SECRET_KEY, or SECRET_KEY_FILE" \
        in started.stderr
    assert not (tmp_path / "var" / "secret-key").exists()


def test_it_refuses_to_start_with_the_key_once_committed(tmp_path):
    started = start(tmp_path, **PRODUCTION_ENV, SECRET_KEY=OLD_COMMITTED_KEY)

    assert started.returncode != 0
    assert "ImproperlyConfigured: The SECRET_KEY is a known key" in started.stderr
    assert "Set SECRET_KEY, or SECRET_KEY_FILE" in started.stderr


def test_it_refuses_to_start_in_production_with_debug_on(tmp_path):
    started = start(tmp_path, **PRODUCTION_ENV, SECRET_KEY=secrets.token_urlsafe(50), DEBUG="true")

    assert started.returncode != 0
    assert "ImproperlyConfigured: DEBUG must be off with HOTSWAP_ENV=production" in started.stderr


def test_it_generates_the_embedded_key_once_and_keeps_it_private_across_restarts(tmp_path):
    first, second = start(tmp_path), start(tmp_path)

    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert second.stdout.strip() == key
    assert secret_key_weakness(key) is None
    kept = tmp_path / "var" / "secret-key"
    assert kept.read_text().strip() == key
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert start(tmp_path / "elsewhere").stdout.strip() != key


def test_it_passes_check_deploy_with_the_documented_production_settings(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(secrets.token_urlsafe(50) + "\n")  # as `echo` or a secrets manager writes it

    checked = start(tmp_path, "manage.py", "check", "--deploy", "--fail-level", "DEBUG",
                    **PRODUCTION_ENV, SECRET_KEY_FILE=str(key_file))

    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues (0 silenced)." in checked.stdout


@pytest.mark.parametrize(("key", "reason"), [
    (OLD_COMMITTED_KEY, "a known key"),
    ("django-insecure-" + secrets.token_urlsafe(50), "marked insecure by Django"),
    (secrets.token_urlsafe(30), "characters long; it needs at least 50"),
    ("ab" * 40, "too predictable"),
    ("password" * 8, "too predictable"),
    ("0123456789" * 6, "too predictable"),
], ids=["committed", "django-insecure", "short", "repeated", "word", "digits"])  # stable ids for xdist
def test_it_refuses_a_weak_key_in_every_setup(key, reason, tmp_path):
    assert reason in secret_key_weakness(key)
    for production in (True, False):
        with pytest.raises(ImproperlyConfigured, match="Set SECRET_KEY, or SECRET_KEY_FILE"):
            secret_key_select(key, production=production, generated_path=tmp_path / "secret-key")
    assert not (tmp_path / "secret-key").exists()


@pytest.mark.parametrize("key", [secrets.token_urlsafe(50), secrets.token_hex(25)], ids=["urlsafe", "hex"])
def test_it_takes_a_strong_key_as_given(key, tmp_path):
    assert secret_key_select(key, production=True, generated_path=tmp_path / "secret-key") == key


def test_it_runs_the_tests_on_a_key_of_their_own():
    assert secret_key_weakness(settings.SECRET_KEY) is None
    assert os.environ["SECRET_KEY"] == settings.SECRET_KEY  # shared with the run's child processes


def test_it_refuses_a_download_link_signed_with_the_key_once_committed():
    claims = {"key": "artifacts/resnet/1.0.0/model.onnx", "name": "model.onnx", "exp": 2**40}

    def download(key: str):
        return Client().get(f"/api/v1/artifacts/{signing.dumps(claims, key=key, salt=SIGNED_URL_SALT)}")

    forged = download(OLD_COMMITTED_KEY)

    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "INVALID_LINK"
    assert download(settings.SECRET_KEY).json()["error"]["code"] != "INVALID_LINK"  # the server's own key signs them
