"""The manifest signing key: from settings, or generated once into a file that every process then shares."""

import base64

import pytest
from django.core.exceptions import ImproperlyConfigured

from devices import manifests


@pytest.fixture
def fresh_key_cache():
    manifests.signing_key.cache_clear()
    manifests.public_key_info.cache_clear()
    yield
    manifests.signing_key.cache_clear()
    manifests.public_key_info.cache_clear()


def test_it_generates_the_key_once_and_reuses_it(settings, tmp_path, fresh_key_cache):
    settings.MANIFEST_SIGNING_KEY = ""
    settings.MANIFEST_SIGNING_KEY_PATH = str(tmp_path / "keys" / "manifest.key")

    first = manifests.public_key_info()
    manifests.signing_key.cache_clear()
    manifests.public_key_info.cache_clear()
    second = manifests.public_key_info()

    assert first == second
    assert len(base64.b64decode((tmp_path / "keys" / "manifest.key").read_text().strip())) == 32
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["manifest.key"]  # no temp files left


def test_it_refuses_a_malformed_key(settings, fresh_key_cache):
    settings.MANIFEST_SIGNING_KEY = "not-a-key"

    with pytest.raises(ImproperlyConfigured, match="32-byte Ed25519 seed"):
        manifests.signing_key()
