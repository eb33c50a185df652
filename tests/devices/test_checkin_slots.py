"""Check-in protocol 2: v1 bodies refused, the models list's limits, and reports attributed to their model's slot."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.heartbeats import heartbeats_flush, heartbeats_pending
from devices.models import InstallReport, MetricWindow, ModelSlot
from devices.services.telemetry import metric_windows_flush
from hotswap_device.protocol import MAX_MODELS
from tests.devices.checkin_helpers import (
    checkin,
    device_with_credential,
    metric_window,
    registry_version,
    running,
    slot_set,
)

pytestmark = pytest.mark.django_db


def nothing_stored(device) -> bool:
    return (device.pk not in heartbeats_pending() and metric_windows_flush() == 0
            and not InstallReport.objects.exists() and not MetricWindow.objects.exists())


@pytest.mark.parametrize("body", [
    {"running": {"model": "resnet", "version": "1.0.0", "sha256": ""}, "metrics": []},  # a v1 agent
    {},
    {"protocol": 1, "models": []},
    {"protocol": 3, "models": []},
    {"protocol": "2", "models": []},
    {"protocol": True, "models": []},
    {"protocol": 2, "models": [], "running": None},
], ids=["v1 body", "empty", "protocol 1", "protocol 3", "string", "true", "v1 running in a v2 body"])
def test_a_body_of_another_protocol_version_is_refused_naming_the_version_the_server_speaks(client, body):
    device, credential = device_with_credential()

    response = checkin(client, credential, body, exact=True)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "PROTOCOL_VERSION_UNSUPPORTED"
    assert "speaks device protocol 2" in error["message"]
    assert [d["field"] for d in error["details"]] == ["protocol"]
    assert nothing_stored(device)


def test_every_problem_of_a_v2_body_is_listed_and_nothing_is_stored(client):
    registry_version()
    device, credential = device_with_credential()
    body = {"models": [running(), running("orientation", "1.0.0"), running()],
            "installs": [{"model": "ghost", "version": "1.0.0", "status": "active", "sequence": 1}],
            "metrics": [metric_window(), metric_window("never-offered", "1.0.0")]}

    response = checkin(client, credential, body)

    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert [d["field"] for d in details] == [
        "models[2].model", "installs[0].model", "installs[0].version", "metrics[1].model", "metrics[1].version"]
    assert "listed twice" in details[0]["message"] and "never offered model ghost" in details[1]["message"]
    assert nothing_stored(device)


def test_more_models_than_a_device_may_run_is_refused(client):
    device, credential = device_with_credential()

    response = checkin(client, credential, {"models": [running(f"m{i}") for i in range(MAX_MODELS + 1)]})

    assert response.status_code == 400
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "models" and f"at most {MAX_MODELS}" in detail["message"]
    assert nothing_stored(device)
    assert checkin(client, credential, {"models": [running(f"m{i}") for i in range(MAX_MODELS)]}).status_code == 200


def test_a_report_about_a_slot_the_device_no_longer_runs_is_accepted(client):
    device, credential = device_with_credential()
    version, _ = registry_version()
    slot_set(device, version)

    # The device refused the version and runs nothing: its report still belongs to the slot.
    response = checkin(client, credential, {"installs": [
        {"model": "resnet", "version": "1.0.0", "status": "refused", "sequence": 1, "error": "older"}]})

    assert response.status_code == 200
    assert InstallReport.objects.get().status == "refused"


@pytest.fixture
def offered(db):
    """A device with resnet 1.1.0 desired over the 1.0.0 it runs (its slot at sequence 2), and its credential."""
    device, credential = device_with_credential()
    old, _ = registry_version(version="1.0.0")
    new, _ = registry_version(version="1.1.0", hidden=9)
    slot_set(device, old)
    slot = slot_set(device, new)
    return device, credential, slot, old, new


def install(status: str, sequence: int, version: str = "1.1.0", error: str = "", **extra) -> dict:
    return {"model": "resnet", "version": version, "status": status, "sequence": sequence, "error": error, **extra}


def test_a_refusal_of_the_current_sequence_is_kept_on_the_slot_until_that_sequence_is_reported_active(client,
                                                                                                   offered):
    _device, credential, slot, _old, new = offered
    models = [running(version="1.0.0")]

    checkin(client, credential, {"models": models, "installs": [install("downloading", 2), install(
        "refused", 2, error="1.1.0 needs 4096 MB")]})
    slot.refresh_from_db()
    assert (slot.state, slot.refused_sequence, slot.refused_reason) == ("refused", 2, "1.1.0 needs 4096 MB")

    checkin(client, credential, {"models": models, "installs": [install("failed", 1, error="old news")]})
    slot.refresh_from_db()
    assert slot.refused_reason == "1.1.0 needs 4096 MB"  # another sequence's report changes nothing

    checkin(client, credential, {"models": [running(version="1.1.0")], "installs": [install("active", 2)]})
    heartbeats_flush()
    slot.refresh_from_db()
    assert (slot.state, slot.refused_sequence, slot.refused_reason) == ("in_sync", None, "")
    assert slot.running_version == new


def test_a_removal_report_clears_what_the_slot_runs(client, offered):
    _device, credential, slot, _old, _new = offered
    checkin(client, credential, {"models": [running(version="1.0.0")]})
    heartbeats_flush()
    ModelSlot.objects.filter(pk=slot.pk).update(version=None, remove=True, sequence=3)
    slot.refresh_from_db()
    assert slot.state == "removing"

    checkin(client, credential, {"installs": [install("removed", 3, version="1.0.0")]})

    slot.refresh_from_db()
    assert (slot.state, slot.running_version, slot.reported_version) == ("removed", None, "")
    heartbeats_flush()  # the same check-in's heartbeat lists no resnet: still nothing runs
    slot.refresh_from_db()
    assert slot.state == "removed"


def test_nothing_a_device_sends_changes_another_devices_slots(client, offered):
    _device, credential, slot, old, new = offered
    other, _other_credential = device_with_credential("cam-2")
    theirs = slot_set(other, new)
    ModelSlot.objects.filter(pk=theirs.pk).update(sequence=2, running_version=old, reported_version="1.0.0",
                                                  reported_at=timezone.now() - timedelta(minutes=1))
    theirs.refresh_from_db()

    # Everything a device can say about resnet, at the other device's sequence too.
    for status in ("refused", "failed", "active", "removed"):
        checkin(client, credential, {"models": [], "installs": [install(status, 2, at=timezone.now().isoformat())]})
    checkin(client, credential, {"models": [running(version="1.1.0")], "metrics": [metric_window(version="1.1.0")]})
    heartbeats_flush()
    metric_windows_flush()

    after = ModelSlot.objects.get(pk=theirs.pk)
    assert [(f.name, getattr(after, f.attname)) for f in ModelSlot._meta.concrete_fields] == [
        (f.name, getattr(theirs, f.attname)) for f in ModelSlot._meta.concrete_fields]
    assert not MetricWindow.objects.filter(device=other).exists()
    assert ModelSlot.objects.get(pk=slot.pk).running_version == new  # the sender's own slot did change


def test_an_idle_three_model_device_costs_one_read_and_gets_one_304(client, django_assert_num_queries):
    device, credential = device_with_credential()
    models = []
    for name, hidden in (("detector", 8), ("recogniser", 9), ("orientation", 10)):
        version, _ = registry_version(name, "1.0.0", hidden=hidden)
        slot_set(device, version)
        models.append(running(name, "1.0.0", version.sha256))
    answer = checkin(client, credential, {"models": models, "metrics": [metric_window("detector")]})
    assert len(answer.json()["desired"]) == 3  # and the versions its windows name are known from now on

    with django_assert_num_queries(1):
        idle = checkin(client, credential, {"models": models, "metrics": [metric_window("detector")]},
                       etag=answer["ETag"])

    assert idle.status_code == 304
