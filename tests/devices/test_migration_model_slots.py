"""Migration 0005 on existing data: each device's single desired state and running model become its model slots."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from devices.models import Device, ModelSlot

pytestmark = pytest.mark.django_db

BEFORE = [("devices", "0004_reports_stored_once"), ("rollouts", "0001_initial")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def slots() -> dict:
    return {(s.device.device_id, s.ai_model.name): s for s in ModelSlot.objects.select_related("device", "ai_model")}


def test_the_single_desired_state_and_running_model_become_slots_of_their_models(make_device, make_version,
                                                                                  make_user):
    operator = make_user("Operator")
    resnet_1, resnet_2 = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    magika = make_version("magika", "1.0.0")
    devices = {name: make_device(device_id=name) for name in ("upgrading", "other-model", "idle", "local", "synced")}
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending foreign key checks under the ALTER TABLEs
    old = migrate(BEFORE)
    desired, device = old.get_model("devices", "DesiredState"), old.get_model("devices", "Device")

    def state(name, version, *, running=None, reported="", **fields):
        device.objects.filter(device_id=name).update(
            current_version_id=running and running.pk, reported_model=reported and reported.split("-")[0],
            reported_version=reported.split("-", 1)[1] if reported else "",
            reported_sha256="ab" * 32 if reported else "")
        desired.objects.create(device_id=devices[name].pk, version_id=version and version.pk, **fields)

    state("upgrading", resnet_2, running=resnet_1, reported="resnet-1.0.0", sequence=3, source="distribution:7",
          reason="canary", set_by_id=operator.pk, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    state("other-model", magika, running=resnet_1, reported="resnet-1.0.0", sequence=2)  # the demo fleet's case
    state("idle", None, sequence=0)  # runs nothing, nothing desired
    state("local", None, reported="resnet-0.9.0-local", sequence=1)  # runs a version the registry lacks
    state("synced", resnet_1, running=resnet_1, reported="resnet-1.0.0", sequence=5, rollback=True)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    found = slots()
    assert set(found) == {("upgrading", "resnet"), ("other-model", "magika"), ("other-model", "resnet"),
                          ("local", "resnet"), ("synced", "resnet")}
    upgrading = found["upgrading", "resnet"]
    assert (upgrading.version, upgrading.sequence, upgrading.source, upgrading.reason, upgrading.set_by) == (
        resnet_2, 3, "distribution:7", "canary", operator)
    assert (upgrading.running_version, upgrading.reported_version, upgrading.state) == (resnet_1, "1.0.0",
                                                                                        "installing")
    assert upgrading.traceparent.startswith("00-aaaa")
    assert (found["other-model", "magika"].version, found["other-model", "magika"].running_version) == (magika, None)
    assert (found["other-model", "resnet"].version, found["other-model", "resnet"].running_version) == (None,
                                                                                                        resnet_1)
    local = found["local", "resnet"]
    assert (local.version, local.running_version, local.reported_version) == (None, None, "0.9.0-local")
    synced = found["synced", "resnet"]
    assert (synced.version, synced.running_version, synced.rollback, synced.sequence, synced.state) == (
        resnet_1, resnet_1, True, 5, "in_sync")
    assert all(s.refused_sequence is None and s.refused_reason == "" for s in found.values())
    assert not Device.objects.get(device_id="idle").slots.exists()
