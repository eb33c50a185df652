"""Heartbeats: buffered in Redis by check-ins, flushed in bulk; silent devices go offline and come back."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from devices import heartbeats
from devices.models import Device
from devices.tasks import device_heartbeats_flush, devices_mark_offline
from tests.devices.checkin_helpers import checkin, device_with_credential, registry_version, running, slot_set

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_buffer():
    heartbeats.heartbeats_flush()


def test_it_buffers_heartbeats_and_flushes_them_in_bulk(client):
    device, credential = device_with_credential()
    version, _ = registry_version()
    models = [running(sha256=version.sha256)]
    checkin(client, credential, {"models": models, "health": {"cpu_percent": 31.5, "disk_percent": 80}})

    device.refresh_from_db()
    assert device.last_seen is None and not device.slots.exists()  # the check-in itself wrote nothing
    assert heartbeats.heartbeats_pending()[device.pk]["models"] == models

    assert device_heartbeats_flush() == 1
    assert device_heartbeats_flush() == 0  # runs twice, same result

    device.refresh_from_db()
    assert device.last_seen is not None
    assert (device.cpu_percent, device.disk_percent, device.memory_percent) == (31.5, 80, None)
    slot = device.slots.get()  # a model it runs but was never offered: a slot with no desired state
    assert (slot.running_version, slot.reported_version, slot.reported_sha256) == (version, "1.0.0", version.sha256)
    assert (slot.version, slot.sequence, slot.state, slot.reported_at) == (None, 0, "unmanaged", device.last_seen)


def test_each_running_model_is_written_into_its_own_slot_and_a_model_no_longer_listed_runs_nothing(client):
    device, credential = device_with_credential()
    other, other_credential = device_with_credential("cam-2")
    detector, _ = registry_version("detector", "1.0.0")
    recogniser, _ = registry_version("recogniser", "2.0.0", hidden=9)
    desired = slot_set(device, detector)  # offered: its desired state stays as it is
    checkin(client, credential, {"models": [running("detector", "1.0.0"), running("recogniser", "2.0.0")]})
    checkin(client, other_credential, {"models": [running("recogniser", "2.0.0")]})
    heartbeats.heartbeats_flush()

    slots = {s.ai_model.name: s for s in device.slots.select_related("ai_model")}
    assert {name: (s.running_version, s.state) for name, s in slots.items()} == {
        "detector": (detector, "in_sync"), "recogniser": (recogniser, "unmanaged")}
    assert (slots["detector"].sequence, slots["detector"].version) == (desired.sequence, detector)

    checkin(client, credential, {"models": [running("detector", "1.0.0")]})  # it stopped the recogniser
    heartbeats.heartbeats_flush()

    assert device.slots.get(ai_model__name="recogniser").running_version is None
    assert device.slots.get(ai_model__name="detector").running_version == detector
    assert other.slots.get().running_version == recogniser


def test_a_slot_is_written_when_what_the_device_runs_changes_and_says_since_when(client):
    device, credential = device_with_credential()
    registry_version("detector", "1.0.0")
    registry_version("detector", "1.1.0", hidden=9)
    checkin(client, credential, {"models": [running("detector", "1.0.0")]})
    heartbeats.heartbeats_flush()
    first = device.slots.get()

    checkin(client, credential, {"models": [running("detector", "1.0.0")]})  # the same again: nothing to write
    heartbeats.heartbeats_flush()

    device.refresh_from_db()
    slot = device.slots.get()
    assert device.last_seen > first.reported_at  # the device's heartbeat moved on...
    assert (slot.reported_version, slot.reported_at) == ("1.0.0", first.reported_at)  # ...its slot says since when

    checkin(client, credential, {"models": [running("detector", "1.1.0")]})
    heartbeats.heartbeats_flush()

    device.refresh_from_db()
    slot = device.slots.get()
    assert (slot.running_version.version, slot.reported_at) == ("1.1.0", device.last_seen)


def test_it_keeps_unknown_versions_as_reported_and_models_the_registry_does_not_know_have_no_slot(client):
    registry_version("resnet", "1.0.0")
    device, credential = device_with_credential()
    checkin(client, credential, {"models": [running("resnet", "0.9.0-local"), running("homegrown", "0.1.0")]})

    heartbeats.heartbeats_flush()

    device.refresh_from_db()
    slot = device.slots.get()
    assert (slot.ai_model.name, slot.running_version, slot.reported_version) == ("resnet", None, "0.9.0-local")
    assert device.last_seen is not None


def test_a_late_flush_moves_no_slot_backwards():
    device, _ = device_with_credential()
    version, _ = registry_version()
    now = timezone.now()
    heartbeats.heartbeat_record(device_pk=device.pk, models=[running()], health=None, now=now)
    heartbeats.heartbeats_flush()
    heartbeats.heartbeat_record(device_pk=device.pk, models=[], health=None, now=now - timedelta(minutes=5))

    heartbeats.heartbeats_flush()

    assert device.slots.get().running_version == version


def test_it_never_moves_last_seen_backwards():
    device, _ = device_with_credential()
    now = timezone.now()
    heartbeats.heartbeat_record(device_pk=device.pk, models=[], health=None, now=now)
    heartbeats.heartbeats_flush()
    heartbeats.heartbeat_record(device_pk=device.pk, models=[], health=None, now=now - timedelta(minutes=5))

    heartbeats.heartbeats_flush()

    device.refresh_from_db()
    assert device.last_seen == now


def test_it_marks_silent_devices_offline_and_back_online_at_their_next_check_in(client):
    device, credential = device_with_credential()
    quiet, _ = device_with_credential("cam-quiet")
    checkin(client, credential)
    heartbeats.heartbeats_flush()
    Device.objects.filter(pk=quiet.pk).update(last_seen=timezone.now() - timedelta(minutes=6))

    assert heartbeats.devices_mark_offline() == 1
    assert heartbeats.devices_mark_offline() == 0
    assert Device.objects.get(pk=quiet.pk).status == "offline"
    assert Device.objects.get(pk=device.pk).status == "active"

    later = timezone.now() + timedelta(minutes=6)
    assert heartbeats.devices_mark_offline(now=later) == 1  # injected clock: now the first one is silent too
    checkin(client, credential)
    assert Device.objects.get(pk=device.pk).status == "active"


def test_the_offline_task_flushes_first_so_a_fresh_heartbeat_counts(client):
    device, credential = device_with_credential()
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now() - timedelta(minutes=10))
    checkin(client, credential)  # buffered only

    assert devices_mark_offline() == 0
    assert Device.objects.get(pk=device.pk).status == "active"


def test_a_never_seen_device_goes_offline_five_minutes_after_registration():
    device, _ = device_with_credential()
    Device.objects.filter(pk=device.pk).update(registered_at=timezone.now() - timedelta(minutes=5, seconds=1))

    assert heartbeats.devices_mark_offline() == 1


def test_it_records_heartbeats_after_redis_lost_its_scripts(client):
    device, credential = device_with_credential()
    heartbeats.redis_client().script_flush()  # as after a Redis restart

    assert checkin(client, credential, {"health": {"cpu_percent": 12.5}}).status_code == 200
    assert checkin(client, credential, {"health": {"cpu_percent": 13.5}}).status_code == 200

    assert heartbeats.heartbeats_pending()[device.pk]["health"] == {"cpu_percent": 13.5}


def test_it_records_heartbeats_after_redis_dropped_the_check_in_connection(client):
    device, credential = device_with_credential()
    assert checkin(client, credential, {"health": {"cpu_percent": 12.5}}).status_code == 200
    check_in_connection = heartbeats._hot_command("CLIENT", "ID")

    # As a Redis restart or its idle timeout would: the server closes the connection check-ins use.
    assert heartbeats.redis_client().client_kill_filter(_id=check_in_connection) == 1

    assert checkin(client, credential, {"health": {"cpu_percent": 14.5}}).status_code == 200
    assert heartbeats.heartbeats_pending()[device.pk]["health"] == {"cpu_percent": 14.5}
    assert heartbeats._hot_command("CLIENT", "ID") != check_in_connection


@pytest.fixture
def set_aside_empty():
    client = heartbeats.redis_client()
    client.delete(heartbeats.set_aside_key("heartbeats"))
    return client


@pytest.mark.parametrize("model", ["a\u0000b", "\udc80x"], ids=["NUL", "lone surrogate"])
def test_it_sets_a_heartbeat_the_database_refuses_aside_and_flushes_and_detects_offline_for_the_rest(
        model, set_aside_empty, settings):
    settings.METRICS_CACHE_SECONDS = 0
    now = timezone.now()
    poisoned, _ = device_with_credential("cam-poisoned")
    fleet = [device_with_credential(f"cam-{i}")[0] for i in range(5)]
    quiet, _ = device_with_credential("cam-quiet", last_seen=now - timedelta(minutes=10))
    counted = heartbeats.set_aside_counts().get("heartbeats", 0)
    for device in fleet[:2]:
        heartbeats.heartbeat_record(device_pk=device.pk, models=[], health={"cpu_percent": 5.0}, now=now)
    # What a check-in buffered before the edge refused such names (PostgreSQL cannot store either), as an
    # older server wrote it (json escapes a lone surrogate; today's encoder refuses to write one at all).
    heartbeats.redis_client().hset(heartbeats._buffer_key(), poisoned.pk, json.dumps(
        {"at": now.isoformat(), "models": [running(model)], "health": None}))
    for device in fleet[2:]:
        heartbeats.heartbeat_record(device_pk=device.pk, models=[], health={"cpu_percent": 5.0}, now=now)

    assert devices_mark_offline() == 1  # the task flushes first: it neither fails nor misses the others

    assert set(Device.objects.filter(last_seen=now).values_list("device_id", flat=True)) == {
        d.device_id for d in fleet}
    assert Device.objects.get(pk=quiet.pk).status == "offline"
    set_aside = set_aside_empty.lrange(heartbeats.set_aside_key("heartbeats"), 0, -1)
    assert len(set_aside) == 1 and json.loads(set_aside[0])["device"] == poisoned.pk
    assert 0 < set_aside_empty.ttl(heartbeats.set_aside_key("heartbeats")) <= heartbeats.SET_ASIDE_TTL.total_seconds()
    assert heartbeats.set_aside_counts()["heartbeats"] == counted + 1
    assert (f"hotswap_heartbeats_set_aside_total {counted + 1}.0"
            in Client().get("/metrics").content.decode())
    assert device_heartbeats_flush() == 0 and devices_mark_offline() == 0  # nothing stuck: runs twice, same result


def test_the_set_aside_heartbeats_are_capped(set_aside_empty, monkeypatch):
    monkeypatch.setattr(heartbeats, "SET_ASIDE_MAX", 3)
    now = timezone.now()
    devices = [device_with_credential(f"cam-{i}")[0] for i in range(5)]
    for device in devices:
        heartbeats.heartbeat_record(device_pk=device.pk, models=[running("a\u0000b", "1")],
                                    health=None, now=now)

    assert heartbeats.heartbeats_flush() == 0

    kept = set_aside_empty.lrange(heartbeats.set_aside_key("heartbeats"), 0, -1)
    assert len(kept) == 3


def test_a_heartbeat_a_version_1_server_buffered_before_the_upgrade_is_flushed_into_its_slot():
    device, _ = device_with_credential()
    version, _ = registry_version()
    seen = timezone.now()
    old_entry = {"at": seen.isoformat(), "running": running(sha256=version.sha256), "health": None}
    heartbeats.redis_client().hset(heartbeats._buffer_key(), device.pk, json.dumps(old_entry))

    assert heartbeats.heartbeats_flush() == 1

    assert device.slots.get().running_version == version
    device.refresh_from_db()
    assert device.last_seen == seen


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


@pytest.mark.django_db
def test_the_heartbeat_flush_never_compares_every_model_of_a_batch_with_every_other():
    """A batch is written in steps linear in its size, whatever PostgreSQL's statistics make it guess.

    With analyzed tables, the flush once planned "the models a device no longer lists" as a nested loop
    over every model of the batch for every slot: 32 s for 6,000 devices. PostgreSQL picks nested loops when
    it guesses few rows, and it guesses 100 for any JSON set: here it may use nothing else. Counted in rows,
    not seconds: no step of the plan may handle more than a few rows per slot of the batch.
    """
    from django.db import connection

    from devices.models import ModelSlot
    from models_app.models import AIModel

    models = [AIModel.objects.create(name=f"flushnet-{i}", framework="onnx") for i in range(3)]
    now = timezone.now()
    devices = Device.objects.bulk_create([Device(device_id=f"flush-{i:04d}", device_type="edge-camera",
                                                 region="eu-west") for i in range(400)])
    ModelSlot.objects.bulk_create([ModelSlot(device=device, ai_model=model, reported_version="1.0.0",
                                             reported_at=now - timedelta(minutes=1))
                                   for device in devices for model in models])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE devices_device; ANALYZE devices_modelslot; ANALYZE models_app_aimodel")
    # Each device now lists two of its three models: every step of the statement has work to do.
    beats = [{"pk": device.pk, "seen": now.isoformat(), "cpu": 1.0, "mem": 2.0, "disk": 3.0,
              "models": [running(model.name) for model in models[:2]]} for device in devices]

    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT plan")
        cursor.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + heartbeats._HEARTBEATS_SQL, {"devices": json.dumps(beats)})
        plan = cursor.fetchone()[0][0]["Plan"]
        cursor.execute("ROLLBACK TO SAVEPOINT plan")

    slots = len(devices) * len(models)
    handled = {f"{node['Node Type']} {node.get('Relation Name') or node.get('CTE Name') or ''}":
               node["Actual Rows"] * node["Actual Loops"] for node in _plan_nodes(plan)}
    assert max(handled.values()) <= 10 * slots, handled
    heartbeats._write_heartbeats([(b["pk"], json.dumps({"at": b["seen"], "models": b["models"]}).encode())
                                  for b in beats])
    assert ModelSlot.objects.filter(ai_model=models[2], reported_version="").count() == len(devices)
    assert ModelSlot.objects.filter(ai_model__in=models[:2], reported_version="1.0.0",  # unchanged: since then
                                    reported_at=now - timedelta(minutes=1)).count() == 2 * len(devices)
