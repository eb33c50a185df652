"""Manifest verification with the pinned key, and semver precedence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hotswap_device.manifest import ManifestRefused, PinnedKey, semver_compare, verify_manifest
from tests.device.fakeserver import iso, key_info, sign

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
PINNED = PinnedKey.from_info(key_info(KEY))


def make_manifest(**fields) -> dict:
    return {"action": "install", "device_id": "cam-1", "model": "resnet", "version": "1.1.0", "sha256": "a" * 64,
            "size": 1234, "url": "http://storage/x", "format": "onnx", "issued_at": iso(NOW),
            "expires_at": iso(NOW + timedelta(minutes=15)), "rollback": False, "sequence": 3, **fields}


def check(desired: dict, *, last_sequence: int | None = 2, running: tuple[str, str] | None = ("resnet", "1.0.0")):
    return verify_manifest(desired, key=PINNED, device_id="cam-1", last_sequence=last_sequence, running=running,
                           now=NOW)


def refusal(desired: dict, **kwargs) -> ManifestRefused:
    with pytest.raises(ManifestRefused) as caught:
        check(desired, **kwargs)
    return caught.value


def test_it_accepts_a_valid_manifest():
    manifest = make_manifest()

    assert check(sign(manifest, KEY)) == manifest


def test_it_accepts_the_same_sequence_again_and_a_first_manifest():
    assert check(sign(make_manifest(sequence=2), KEY))["sequence"] == 2  # a re-issued URL keeps the sequence
    assert check(sign(make_manifest(), KEY), last_sequence=None, running=None)["version"] == "1.1.0"


@pytest.mark.parametrize(("field", "value"), [("version", "9.9.9"), ("sha256", "b" * 64), ("url", "http://evil/x"),
                                              ("rollback", True), ("sequence", 99), ("device_id", "cam-2")])
def test_it_refuses_a_tampered_field(field, value):
    desired = sign(make_manifest(), KEY)
    desired["manifest"][field] = value

    error = refusal(desired)

    assert error.code == "bad_signature"
    assert "does not verify with the pinned key" in str(error)


def test_it_refuses_a_manifest_signed_with_another_key():
    error = refusal(sign(make_manifest(), Ed25519PrivateKey.generate()))

    assert error.code == "bad_signature"


def test_it_refuses_a_missing_or_garbled_signature():
    desired = sign(make_manifest(), KEY)

    assert refusal({**desired, "signature": "not base64!"}).code == "bad_signature"
    assert refusal({**desired, "signature": ""}).code == "bad_signature"
    assert refusal({"signature": desired["signature"]}).code == "malformed"


def test_it_refuses_an_expired_manifest():
    error = refusal(sign(make_manifest(expires_at=iso(NOW - timedelta(seconds=1))), KEY))

    assert error.code == "expired"
    assert "expired at" in str(error)


def test_it_refuses_a_lower_sequence():
    error = refusal(sign(make_manifest(sequence=1), KEY), last_sequence=2)

    assert error.code == "old_sequence"
    assert "lower than the last accepted (2) for resnet" in str(error)


def test_it_refuses_a_downgrade():
    error = refusal(sign(make_manifest(version="1.0.0-rc.1"), KEY), running=("resnet", "1.0.0"))

    assert error.code == "downgrade"
    assert "older than the running 1.0.0" in str(error)


def test_it_accepts_a_downgrade_marked_rollback():
    manifest = make_manifest(version="0.9.0", rollback=True)

    assert check(sign(manifest, KEY), running=("resnet", "1.0.0")) == manifest


def test_it_does_not_order_versions_of_another_model():
    assert check(sign(make_manifest(model="yolo", version="0.1.0"), KEY), running=("resnet", "1.0.0"))


def test_it_refuses_a_manifest_for_another_device():
    error = refusal(sign(make_manifest(device_id="cam-2"), KEY))

    assert error.code == "wrong_device"
    assert "'cam-2'" in str(error)


@pytest.mark.parametrize("fields", [{"size": "12"}, {"sequence": True}, {"sha256": "xyz"}, {"version": "1.0"},
                                    {"expires_at": "tomorrow"}, {"action": "upgrade"}, {"action": None}])
def test_it_refuses_malformed_fields(fields):
    assert refusal(sign(make_manifest(**fields), KEY)).code == "malformed"


def remove_manifest(**fields) -> dict:
    return {"action": "remove", "device_id": "cam-1", "model": "resnet", "issued_at": iso(NOW),
            "expires_at": iso(NOW + timedelta(minutes=15)), "sequence": 3, **fields}


def test_it_accepts_a_removal_which_carries_no_version_and_refuses_a_stale_one():
    manifest = remove_manifest()

    assert check(sign(manifest, KEY)) == manifest
    assert refusal(sign(remove_manifest(sequence=1), KEY), last_sequence=2).code == "old_sequence"
    assert refusal(sign(remove_manifest(device_id="cam-2"), KEY)).code == "wrong_device"
    tampered = sign(manifest, KEY)
    tampered["manifest"]["model"] = "yolo"  # a signed removal of one model cannot be turned against another
    assert refusal(tampered).code == "bad_signature"


@pytest.mark.parametrize(("lower", "higher"), [
    ("1.0.0", "2.0.0"), ("2.0.0", "2.1.0"), ("2.1.0", "2.1.1"), ("1.0.0-alpha", "1.0.0"),
    ("1.0.0-alpha", "1.0.0-alpha.1"), ("1.0.0-alpha.1", "1.0.0-alpha.beta"), ("1.0.0-alpha.beta", "1.0.0-beta"),
    ("1.0.0-beta", "1.0.0-beta.2"), ("1.0.0-beta.2", "1.0.0-beta.11"), ("1.0.0-beta.11", "1.0.0-rc.1"),
    ("1.0.0-rc.1", "1.0.0"), ("1.9.0", "1.10.0"),
])
def test_it_orders_versions_by_semver_precedence(lower, higher):
    assert semver_compare(lower, higher) == -1
    assert semver_compare(higher, lower) == 1


def test_it_ignores_build_metadata():
    assert semver_compare("1.0.0+build.1", "1.0.0+build.2") == 0
