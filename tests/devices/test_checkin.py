"""POST /api/v1/devices/checkin: identity, desired state with signed manifests, ETag/304, reports, validation."""

import base64
import hashlib
import json
from datetime import timedelta

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from devices.heartbeats import heartbeats_flush
from devices.manifests import canonical_bytes
from devices.models import Device, InstallReport, MetricWindow, ModelSlot
from devices.services.registry import device_decommission
from devices.services.telemetry import metric_windows_flush
from hotswap.lib.untrusted import MAX_JSON_DEPTH
from tests.devices.checkin_helpers import (
    checkin,
    device_with_credential,
    metric_window,
    registry_version,
    running,
    slot_set,
)
from tests.live import gunicorn_server

pytestmark = pytest.mark.django_db
IDLE = '{"protocol": 2, "models": []}'


def verify(desired: dict, public_key_b64: str) -> None:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    key.verify(base64.b64decode(desired["signature"]), canonical_bytes(desired["manifest"]))


def test_it_answers_an_idle_device_with_nothing_desired_and_an_etag(client):
    _device, credential = device_with_credential()

    response = checkin(client, credential, {"models": []})

    assert response.status_code == 200
    body = response.json()
    assert body["protocol"] == 2 and body["desired"] == []
    assert body["poll_interval_seconds"] == 60
    assert response["ETag"]
    assert response["traceparent"].startswith("00-")


def test_it_answers_304_without_a_body_when_nothing_changed(client):
    _device, credential = device_with_credential()
    etag = checkin(client, credential)["ETag"]

    again = checkin(client, credential, etag=etag)

    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag


@pytest.mark.parametrize("prepared", [True, False])
def test_it_does_one_database_read_and_no_write_on_the_warm_path(client, django_assert_num_queries, settings,
                                                                 prepared):
    settings.CHECKIN_PREPARED_STATEMENTS = prepared  # false: for connection poolers without prepared statements
    _device, credential = device_with_credential()
    etag = checkin(client, credential)["ETag"]

    with django_assert_num_queries(1):
        assert checkin(client, credential, {"models": [running()], "health": {"cpu_percent": 5}},
                       etag=etag).status_code == 304


def test_it_hands_out_a_signed_manifest_for_the_desired_version(client):
    device, credential = device_with_credential()
    version, content = registry_version()
    slot_set(device, version)

    response = checkin(client, credential)

    [desired] = response.json()["desired"]
    manifest = desired["manifest"]
    assert manifest["action"] == "install" and manifest["device_id"] == "cam-1"
    assert (manifest["model"], manifest["version"]) == ("resnet", "1.0.0")
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest() and manifest["size"] == len(content)
    assert manifest["rollback"] is False and manifest["sequence"] == 1
    assert manifest["expires_at"] > manifest["issued_at"]
    verify(desired, client.get("/api/v1/devices/manifest-key").json()["public_key"])
    assert requests.get(manifest["url"], timeout=10).content == content


@pytest.fixture
def three_models(db):
    """A device running detector 1.0.0, recogniser 2.0.0 and orientation 1.0.0 (all in the registry)."""
    device, credential = device_with_credential()
    versions = {name: registry_version(name, version, hidden=hidden)[0]
                for name, version, hidden in (("detector", "1.0.0", 8), ("recogniser", "2.0.0", 9),
                                              ("orientation", "1.0.0", 10))}
    models = [running(v.ai_model.name, v.version, v.sha256) for v in versions.values()]
    return device, credential, versions, models


def test_a_three_model_device_gets_one_signed_manifest_per_slot_with_its_own_sequence(client, three_models):
    device, credential, versions, models = three_models
    detector_next, _ = registry_version("detector", "1.1.0", hidden=11)
    slot_set(device, versions["detector"])
    slot_set(device, detector_next)  # the detector's slot at sequence 2
    slot_set(device, versions["orientation"], remove=True)  # orientation: unload it (sequence 1)
    # The recogniser runs with no desired state: the answer says nothing about it, the device keeps it.
    assert checkin(client, credential, {"models": models}).status_code == 200
    heartbeats_flush()

    answer = checkin(client, credential, {"models": models}).json()

    public_key = client.get("/api/v1/devices/manifest-key").json()["public_key"]
    for desired in answer["desired"]:
        verify(desired, public_key)
    manifests = [d["manifest"] for d in answer["desired"]]
    assert [(m["action"], m["model"], m["sequence"]) for m in manifests] == [
        ("install", "detector", 2), ("remove", "orientation", 1)]
    assert manifests[0]["version"] == "1.1.0" and manifests[0]["rollback"] is False
    assert set(manifests[1]) == {"action", "device_id", "model", "issued_at", "expires_at", "sequence"}
    assert ModelSlot.objects.get(device=device, ai_model__name="recogniser").running_version == versions["recogniser"]


def change_by_orm(slot: ModelSlot, version) -> None:
    slot_set(slot.device, version)


def change_by_raw_sql(slot: ModelSlot, version) -> None:
    # How rollouts change desired state in bulk: nothing on the check-in path may hold an old copy.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE devices_modelslot SET version_id = %s, sequence = sequence + 1 WHERE id = %s",
                       [version.pk, slot.pk])


@pytest.mark.parametrize("change", [change_by_orm, change_by_raw_sql])
def test_one_etag_covers_the_whole_desired_set_and_changes_with_any_slot(client, three_models, change):
    device, credential, versions, models = three_models
    slots = {name: slot_set(device, version) for name, version in versions.items()}
    first = checkin(client, credential, {"models": models})
    etag = first["ETag"]

    idle = [checkin(client, credential, {"models": models}, etag=etag) for _ in range(3)]
    assert [r.status_code for r in idle] == [304] * 3 and {r["ETag"] for r in idle} == {etag}

    change(slots["recogniser"], registry_version("recogniser", "2.1.0", hidden=12)[0])
    response = checkin(client, credential, {"models": models}, etag=etag)

    assert response.status_code == 200 and response["ETag"] != etag
    before = {d["manifest"]["model"]: d for d in first.json()["desired"]}
    after = {d["manifest"]["model"]: d for d in response.json()["desired"]}
    assert (after["recogniser"]["manifest"]["version"], after["recogniser"]["manifest"]["sequence"]) == ("2.1.0", 2)
    assert after["detector"] == before["detector"] and after["orientation"] == before["orientation"]
    assert checkin(client, credential, {"models": models}, etag=response["ETag"]).status_code == 304


@pytest.mark.parametrize("field", ["rollback", "remove"])
def test_the_etag_changes_with_a_slots_rollback_flag_or_removal_even_at_the_same_sequence(client, three_models,
                                                                                        field):
    device, credential, versions, _models = three_models
    slot = slot_set(device, versions["detector"])
    etag = checkin(client, credential)["ETag"]

    ModelSlot.objects.filter(pk=slot.pk).update(**{field: True}, **({"version": None} if field == "remove" else {}))

    assert checkin(client, credential, etag=etag).status_code == 200


def test_a_slot_whose_version_turned_corrupt_is_left_out_and_the_others_still_ship(client, three_models):
    device, credential, versions, _models = three_models
    for version in versions.values():
        slot_set(device, version)
    etag = checkin(client, credential)["ETag"]

    versions["recogniser"].__class__.objects.filter(pk=versions["recogniser"].pk).update(status="corrupt")
    response = checkin(client, credential, etag=etag)

    assert response.status_code == 200 and response["ETag"] != etag
    assert [d["manifest"]["model"] for d in response.json()["desired"]] == ["detector", "orientation"]


def test_devices_of_a_rollout_share_a_download_link_per_url_period(client, settings):
    devices = [device_with_credential(f"cam-{i}") for i in range(3)]
    version, content = registry_version()
    for device, _ in devices:
        slot_set(device, version)

    manifests = [checkin(client, credential).json()["desired"][0]["manifest"] for _, credential in devices]
    settings.MANIFEST_TTL_SECONDS = 7200  # another URL period
    later = checkin(client, devices[0][1]).json()["desired"][0]["manifest"]

    assert len({m["url"] for m in manifests}) == 1 and len({m["device_id"] for m in manifests}) == 3
    assert later["url"] != manifests[0]["url"] and later["expires_at"] != manifests[0]["expires_at"]
    assert requests.get(later["url"], timeout=10).content == content


def test_it_rejects_a_tampered_manifest_signature(client):
    device, credential = device_with_credential()
    version, _ = registry_version()
    slot_set(device, version)
    [desired] = checkin(client, credential).json()["desired"]
    public_key = client.get("/api/v1/devices/manifest-key").json()["public_key"]

    desired["manifest"]["version"] = "9.9.9"

    with pytest.raises(InvalidSignature):
        verify(desired, public_key)


def test_it_stores_install_reports_and_metric_windows(client):
    device, credential = device_with_credential()
    version, _ = registry_version()
    body = {
        "models": [running(sha256=version.sha256)],
        "installs": [{"model": "resnet", "version": "1.0.0", "status": "active", "sequence": 1, "duration_ms": 900,
                      "at": timezone.now().isoformat()}],
        "metrics": [metric_window(accuracy=0.91, labelled_count=40,
                                  latency_histogram=[0, 0, 100, 400, 100, 0, 0, 0, 0, 0, 0, 0, 0])],
    }

    response = checkin(client, credential, body)

    assert response.json()["accepted"] == {"installs": 1, "metrics": 1}
    report = InstallReport.objects.get()
    assert (report.device, report.version, report.status, report.duration_ms) == (device, version, "active", 900)
    window = MetricWindow.objects.get()
    assert (window.version, window.inference_count, window.latency_p99_ms, window.accuracy) == (version, 600, 7.0,
                                                                                                 0.91)
    assert window.latency_histogram[3] == 400


@pytest.mark.parametrize("installs_too", [True, False], ids=["with installs, written at once", "windows, buffered"])
def test_every_reported_field_is_stored_in_the_order_sent(client, installs_too):
    device, credential = device_with_credential()
    version, _ = registry_version()
    at = timezone.now() - timedelta(seconds=30)
    end = timezone.now() - timedelta(seconds=5)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = {
        "models": [running()],
        "installs": [
            {"model": "resnet", "version": "1.0.0", "status": "downloading", "sequence": 7, "at": at.isoformat()},
            {"model": "resnet", "version": "1.0.0", "status": "failed", "sequence": 7, "duration_ms": 1234,
             "error": "sha256 mismatch", "at": at.isoformat(), "traceparent": traceparent},
        ],
        "metrics": [
            metric_window(end=end - timedelta(minutes=1), count=10, errors=0, p50=1.5, p95=2.5, p99=3.5),
            metric_window(end=end, count=600, errors=3, p50=3.0, p95=5.0, p99=7.0, accuracy=0.5, labelled_count=20,
                          latency_histogram=[0, 0, 100, 400, 97, 3, 0, 0, 0, 0, 0, 0, 0]),
        ],
    }

    if not installs_too:
        body.pop("installs")
    assert checkin(client, credential, body).json()["accepted"] == {"installs": 2 if installs_too else 0,
                                                                     "metrics": 2}
    assert metric_windows_flush() == (0 if installs_too else 2)

    installs = list(InstallReport.objects.order_by("id").values_list(
        "device", "version", "model_name", "model_version", "status", "sequence", "duration_ms", "error",
        "reported_at", "traceparent"))
    assert installs == ([
        (device.pk, version.pk, "resnet", "1.0.0", "downloading", 7, None, "", at, ""),
        (device.pk, version.pk, "resnet", "1.0.0", "failed", 7, 1234, "sha256 mismatch", at, traceparent),
    ] if installs_too else [])
    windows = list(MetricWindow.objects.order_by("id").values_list(
        "version", "model_name", "window_start", "window_end", "inference_count", "error_count", "latency_p50_ms",
        "latency_p95_ms", "latency_p99_ms", "latency_histogram", "accuracy", "labelled_count"))
    assert windows == [
        (version.pk, "resnet", end - timedelta(minutes=2), end - timedelta(minutes=1), 10, 0, 1.5, 2.5, 3.5, None,
         None, None),
        (version.pk, "resnet", end - timedelta(minutes=1), end, 600, 3, 3.0, 5.0, 7.0,
         [0, 0, 100, 400, 97, 3, 0, 0, 0, 0, 0, 0, 0], 0.5, 20),
    ]


def test_it_stores_reports_sent_with_a_matching_etag(client, make_version):
    make_version()
    _device, credential = device_with_credential()
    etag = checkin(client, credential)["ETag"]

    response = checkin(client, credential, {"models": [running()], "metrics": [metric_window()]}, etag=etag)

    assert response.status_code == 304
    assert metric_windows_flush() == 1
    assert MetricWindow.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metrics": [metric_window(count=-1)]}, "metrics[0].inference_count"),
        ({"metrics": [metric_window(count=5, errors=6)]}, "metrics[0].error_count"),
        ({"metrics": [metric_window(p50=9, p95=5, p99=7)]}, "metrics[0].latency_ms"),
        ({"metrics": [metric_window(p99=10**9)]}, "metrics[0].latency_ms.p99"),
        ({"metrics": [metric_window(end=timezone.now() + timedelta(hours=1))]}, "metrics[0].window_end"),
        ({"metrics": [metric_window(end=timezone.now() - timedelta(days=30))]}, "metrics[0].window_start"),
        ({"metrics": [metric_window(accuracy=1.5)]}, "metrics[0].accuracy"),
        ({"metrics": [metric_window(count=10, labelled_count=11)]}, "metrics[0].labelled_count"),
        ({"metrics": [metric_window(latency_histogram=[1, 2])]}, "metrics[0].latency_histogram"),
        ({"metrics": [metric_window(surprise=1)]}, "metrics[0].surprise"),
        ({"metrics": [metric_window()] * 101}, "metrics"),
        ({"metrics": "lots"}, "metrics"),
        ({"installs": [{"model": "m", "version": "1.0.0", "status": "exploded"}]}, "installs[0].status"),
        ({"installs": [{"model": "m", "version": "1.0.0", "status": "failed",
                        "at": (timezone.now() + timedelta(hours=2)).isoformat()}]}, "installs[0].at"),
        # Every time a device sends is bounded: none stored as a BC (or far-future) timestamp.
        ({"installs": [{"model": "m", "version": "1.0.0", "status": "failed", "at": "0001-01-01T00:00:00+14:00"}]},
         "installs[0].at"),
        ({"installs": [{"model": "m", "version": "1.0.0", "status": "failed",
                        "at": (timezone.now() - timedelta(days=8)).isoformat()}]}, "installs[0].at"),
        ({"metrics": [{**metric_window(), "window_start": "0001-01-01T00:00:00+14:00",
                       "window_end": "0001-01-01T00:01:00+14:00"}]}, "metrics[0].window_end"),
        ({"metrics": [{**metric_window(), "window_start": "9999-12-31T23:58:00-14:00",
                       "window_end": "9999-12-31T23:59:00-14:00"}]}, "metrics[0].window_start"),
        ({"health": {"cpu_percent": "high"}}, "health.cpu_percent"),
        ({"models": [running(), {"model": "m"}]}, "models[1].version"),
        ({"models": [running(), running()]}, "models[1].model"),
        ({"models": [running(f"m{i}") for i in range(33)]}, "models"),
        ({"models": {"resnet": "1.0.0"}}, "models"),
        ({"models": [running(), {"model": "m", "version": "1", "sha256": "", "extra": 1}]}, "models[1].extra"),
        ({"firmware": "2.1"}, "firmware"),
    ],
)
def test_it_rejects_bad_reports_saying_what_is_wrong_and_stores_nothing(client, body, field):
    _device, credential = device_with_credential()
    # A valid install rides along: all or nothing, so it must not be stored either.
    body = {"models": [running()], "installs": [{"model": "resnet", "version": "1.0.0", "status": "active"}], **body}

    response = checkin(client, credential, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in [d["field"] for d in error["details"]], error["details"]
    assert MetricWindow.objects.count() == 0 and InstallReport.objects.count() == 0


@pytest.mark.parametrize("raw", [b"{not json", b'{"protocol": 2, "models": [], "metrics": [{"inference_count": NaN}]}',
                                 b"[1, 2]", b'{"protocol": 2, "models": [], "health": {"cpu_percent": Infinity}}'])
def test_it_rejects_malformed_json_and_non_numbers(client, raw):
    _device, credential = device_with_credential()

    response = checkin(client, credential, raw)

    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("MALFORMED_REQUEST", "VALIDATION_ERROR")


@pytest.mark.parametrize("text", ["a\x00b", "\udc80x"])
def test_it_refuses_text_postgresql_cannot_store_naming_the_field_and_keeps_the_flush_working(client, text):
    device, credential = device_with_credential()
    healthy, healthy_credential = device_with_credential("cam-2")
    version, _ = registry_version()
    checkin(client, healthy_credential, {"models": [running()]})

    response = checkin(client, credential, {"models": [running(text)],
                                            "metrics": [metric_window(), metric_window(model=text)]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert {d["field"] for d in error["details"]} == {"models[0].model", "metrics[1].model"}
    assert heartbeats_flush() == 1 and metric_windows_flush() == 0  # only the healthy device's heartbeat
    device.refresh_from_db()
    healthy.refresh_from_db()
    assert device.last_seen is None and not device.slots.exists()
    assert healthy.slots.get().running_version == version


@pytest.mark.parametrize("where", ["metrics[3].latency_ms.p50", "health.cpu_percent", "metrics[0].accuracy"])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_it_names_the_item_holding_nan_or_infinity_so_the_agent_can_drop_exactly_it(client, make_version, where,
                                                                                     constant):
    make_version()
    _device, credential = device_with_credential()
    body = {"protocol": 2, "models": [running()], "health": {"cpu_percent": 1.5},
            "metrics": [metric_window(accuracy=0.5) for _ in range(4)]}
    *parents, leaf = where.replace("[", ".").replace("]", "").split(".")
    target = body
    for step in parents:
        target = target[int(step)] if step.isdigit() else target[step]
    target[leaf] = "__constant__"
    raw = json.dumps(body).replace('"__constant__"', constant).encode()  # what json.dumps(allow_nan=True) sends

    response = checkin(client, credential, raw)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == [where]
    assert InstallReport.objects.count() == 0 and metric_windows_flush() == 0


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_it_refuses_a_body_nested_deeper_than_the_cap(client, depth):
    _device, credential = device_with_credential()

    response = checkin(client, credential, b'{"protocol": 2, "models": ' + b"[" * depth + b"]" * depth + b"}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MALFORMED_REQUEST"


def test_brackets_inside_strings_do_not_count_as_nesting(client, make_version):
    make_version()
    _device, credential = device_with_credential()
    deep_looking = "[{" * MAX_JSON_DEPTH + '\\" \\\\'  # with escaped quotes and backslashes

    response = checkin(client, credential, {"models": [running(), running(deep_looking)],
                                            "metrics": [metric_window()] * MAX_JSON_DEPTH})

    assert response.status_code == 400  # too long a model name, judged on its content
    assert [d["field"] for d in response.json()["error"]["details"]] == ["models[1].model"]


def test_it_caps_the_body(client, settings):
    settings.CHECKIN_MAX_BODY_BYTES = 100
    _device, credential = device_with_credential()

    response = checkin(client, credential, {"metrics": [metric_window()]})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("header", ["", "Bearer abc", "Device hsd_short_x", "Device hsd_0000aaaa_wrong"])
def test_it_refuses_missing_or_wrong_credentials(client, header):
    device_with_credential()

    response = client.post("/api/v1/devices/checkin", "{}", content_type="application/json",
                           HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Device"


def test_a_decommissioned_device_hears_403_decommissioned_and_a_revoked_credential_401(client,
                                                                                     django_assert_num_queries):
    device, credential = device_with_credential()
    revoked, revoked_credential = device_with_credential("cam-2")
    device_decommission(device=device, actor=None)  # revokes its credentials too
    revoked.credentials.update(revoked_at=timezone.now())

    with django_assert_num_queries(1):
        decommissioned = checkin(client, credential)
    assert decommissioned.status_code == 403
    assert decommissioned.json()["error"]["code"] == "DEVICE_DECOMMISSIONED"
    refused = checkin(client, revoked_credential)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "DEVICE_CREDENTIAL_INVALID"
    wrong_secret = checkin(client, credential[:-4] + "abcd")
    assert wrong_secret.status_code == 401


def test_it_locks_out_revoked_credentials_and_decommissioned_devices(client):
    device, credential = device_with_credential()
    other, other_credential = device_with_credential("cam-2")
    device.credentials.update(revoked_at=timezone.now())
    Device.objects.filter(pk=other.pk).update(status=Device.Status.DECOMMISSIONED)

    assert checkin(client, credential).status_code == 401
    assert checkin(client, other_credential).status_code == 403


def test_a_device_reports_only_about_itself(client, make_version):
    make_version()
    device, credential = device_with_credential("cam-1")
    other, _ = device_with_credential("cam-2")

    checkin(client, credential, {"models": [running()], "metrics": [metric_window()]})
    metric_windows_flush()

    assert MetricWindow.objects.get().device == device
    assert not other.metric_windows.exists()


def test_it_serves_the_manifest_public_key_also_by_command(client, capsys):
    info = client.get("/api/v1/devices/manifest-key").json()
    call_command("manifest_public_key", "--json")

    assert info["algorithm"] == "ed25519" and len(base64.b64decode(info["public_key"])) == 32
    assert json.loads(capsys.readouterr().out) == info


def test_it_rate_limits_a_chatty_device_without_touching_the_others(client, settings, make_version):
    make_version()
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "device_checkin": "3/minute"}
    _device, credential = device_with_credential("chatty")
    _other, other_credential = device_with_credential("calm")

    statuses = [checkin(client, credential, {"models": [running()], "metrics": [metric_window()]}).status_code
                for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    limited = checkin(client, credential)
    assert limited.json()["error"]["code"] == "RATE_LIMITED" and 1 <= int(limited["Retry-After"]) <= 60
    assert metric_windows_flush() == 3  # the refused check-in buffered nothing
    assert MetricWindow.objects.count() == 3
    assert checkin(client, other_credential).status_code == 200


@pytest.mark.parametrize("synchronous", [True, False])
def test_it_stores_reports_in_either_commit_mode_in_the_order_sent(client, settings, synchronous, make_version):
    make_version()
    settings.TELEMETRY_SYNCHRONOUS_COMMIT = synchronous
    device, credential = device_with_credential()
    at = timezone.now().isoformat()
    installs = [{"model": "resnet", "version": "1.0.0", "status": status, "at": at}
                for status in ("downloading", "installed", "active")]

    checkin(client, credential, {"models": [running()], "installs": installs,
                                 "metrics": [metric_window(), metric_window(count=7)]})

    assert list(InstallReport.objects.filter(device=device).order_by("id").values_list("status", flat=True)) == [
        "downloading", "installed", "active"]
    assert list(MetricWindow.objects.order_by("id").values_list("inference_count", flat=True)) == [600, 7]



@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_server_whose_database_connections_died_while_idle_answers_the_next_check_ins():
    # The hot path skips Django's per-request health check (a SELECT 1 round trip): it must recover as well.
    _device, credential = device_with_credential()
    with gunicorn_server() as (base, _process):
        def check_in(etag: str = "") -> requests.Response:
            return requests.post(f"{base}/api/v1/devices/checkin", data=IDLE, timeout=30, headers={
                "Authorization": f"Device {credential}", "Content-Type": "application/json", "If-None-Match": etag})

        etag = check_in().headers["ETag"]
        assert [check_in(etag).status_code for _ in range(8)] == [304] * 8  # every thread holds a connection
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert cursor.fetchone()[0] >= 1

        assert [check_in(etag).status_code for _ in range(8)] == [304] * 8


def sent_three_times(client, credential: str, body: dict) -> list[dict]:
    return [checkin(client, credential, body).json()["accepted"] for _ in range(3)]


@pytest.mark.parametrize("installs_too", [True, False], ids=["written at once", "buffered"])
def test_a_report_sent_again_is_accepted_and_stored_once(client, make_version, installs_too):
    version = make_version()
    device, credential = device_with_credential()
    install = {"model": "resnet", "version": "1.0.0", "status": "failed", "sequence": 3, "error": "no space",
               "at": timezone.now().isoformat()}
    body = {"models": [running()], "installs": [install] if installs_too else [], "metrics": [metric_window(count=9)]}

    accepted = sent_three_times(client, credential, body)
    metric_windows_flush()

    assert accepted == [{"installs": int(installs_too), "metrics": 1}] * 3  # a resend still counts as delivered
    assert InstallReport.objects.filter(device=device, version=version).count() == int(installs_too)
    assert list(MetricWindow.objects.values_list("device", "version", "inference_count")) == [
        (device.pk, version.pk, 9)]


def test_a_retried_install_is_a_new_report(client, make_version):
    make_version()
    device, credential = device_with_credential()
    first, second = timezone.now() - timedelta(seconds=30), timezone.now()

    for at in (first, second):
        checkin(client, credential, {"models": [running()], "installs": [
            {"model": "resnet", "version": "1.0.0", "status": "failed", "sequence": 3, "at": at.isoformat()}]})

    assert list(device.install_reports.order_by("id").values_list("reported_at", flat=True)) == [first, second]


@pytest.mark.parametrize("installs_too", [True, False], ids=["written at once", "buffered"])
def test_copies_of_a_window_in_one_check_in_are_stored_once(client, make_version, installs_too):
    make_version()
    _device, credential = device_with_credential()
    window = metric_window(count=9)
    installs = [{"model": "resnet", "version": "1.0.0", "status": "active", "sequence": 1}] * 100

    response = checkin(client, credential, {"models": [running()], "installs": installs if installs_too else [],
                                            "metrics": [window] * 100})
    metric_windows_flush()

    assert response.json()["accepted"] == {"installs": 100 if installs_too else 0, "metrics": 100}
    assert MetricWindow.objects.count() == 1
    assert InstallReport.objects.count() == int(installs_too)


def test_it_refuses_reports_on_versions_the_registry_does_not_have_naming_each(client, make_version):
    make_version()
    _device, credential = device_with_credential()
    body = {"models": [running(), running("ghost", "0.1.0")],
            "installs": [{"model": "resnet", "version": "1.0.0", "status": "active"},
                         {"model": "ghost", "version": "0.1.0", "status": "active"}],
            "metrics": [metric_window(), metric_window("resnet", "9.9.9")]}

    response = checkin(client, credential, body)

    assert response.status_code == 400
    assert [d["field"] for d in response.json()["error"]["details"]] == ["installs[1].version", "metrics[1].version"]
    assert InstallReport.objects.count() == 0 and MetricWindow.objects.count() == 0
    assert metric_windows_flush() == 0


def test_a_version_uploaded_after_a_refusal_is_accepted_at_once(client, make_version):
    _device, credential = device_with_credential()
    body = {"models": [running()], "metrics": [metric_window()]}
    assert checkin(client, credential, body).status_code == 400

    make_version()

    assert checkin(client, credential, body).status_code == 200



@pytest.mark.parametrize("model", ["a\u0000b", "\udc80x"], ids=["NUL", "lone surrogate"])
def test_a_window_the_database_could_not_store_is_refused_at_the_check_in_not_accepted_and_lost(client, model):
    _device, credential = device_with_credential()

    response = checkin(client, credential, {"metrics": [metric_window(model)],
                                            "installs": [{"model": model, "version": "1.0.0", "status": "active"}]})

    assert response.status_code == 400
    assert {d["field"] for d in response.json()["error"]["details"]} >= {"metrics[0].model", "installs[0].model"}
    assert metric_windows_flush() == 0 and MetricWindow.objects.count() == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_serves_a_check_in_sent_chunked_and_caps_it(make_version):
    make_version()
    device, credential = device_with_credential()
    body = json.dumps({"protocol": 2, "models": [running()],
                       "installs": [{"model": "resnet", "version": "1.0.0", "status": "active"}],
                       "metrics": [metric_window()]}).encode()

    def chunks(data: bytes):
        yield from (data[i:i + 100] for i in range(0, len(data), 100))  # a generator: requests sends it chunked

    with gunicorn_server(env={"CHECKIN_MAX_BODY_BYTES": "4096"}) as (base, _process):
        def check_in(data: bytes) -> requests.Response:
            return requests.post(f"{base}/api/v1/devices/checkin", data=chunks(data), timeout=30, headers={
                "Authorization": f"Device {credential}", "Content-Type": "application/json"})

        accepted = check_in(body)
        too_large = check_in(json.dumps({"protocol": 2, "models": [], "metrics": [metric_window()] * 30}).encode())

    assert accepted.request.headers["Transfer-Encoding"] == "chunked"
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["accepted"] == {"installs": 1, "metrics": 1}
    assert device.install_reports.get().status == "active"
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
