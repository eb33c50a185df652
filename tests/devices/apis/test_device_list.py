"""GET /api/v1/devices: every filter, search, ordering, pagination, and a constant number of queries."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, ModelSlot

pytestmark = pytest.mark.django_db


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [device["device_id"] for device in response.json()["results"]]


@pytest.fixture
def fleet(make_device, make_version, make_slot):
    resnet_1, resnet_2 = make_version("resnet", "1.0.0"), make_version("resnet", "2.0.0")
    yolo, magika = make_version("yolo", "1.0.0"), make_version("magika", "3.0.0")
    cam_a = make_device(device_id="cam-a", name="Lobby camera", region="eu-west", device_type="edge-camera",
                        tags=["lobby", "gen2"], memory_mb=2048)
    make_slot(cam_a, running=resnet_1)
    cam_b = make_device(device_id="cam-b", name="Door camera", region="us-east", device_type="edge-camera",
                        tags=["door"], memory_mb=4096, status=Device.Status.OFFLINE)
    make_slot(cam_b, running=resnet_2)
    make_slot(cam_b, desired=magika)  # a model it should run and does not yet
    gw_c = make_device(device_id="gw-c", name="Gateway", region="eu-west", device_type="gateway", tags=["gen2"],
                       memory_mb=512)
    make_slot(gw_c, running=yolo)
    make_slot(gw_c, running=None, desired=resnet_2)
    make_device(device_id="old-d", region="us-east", device_type="gateway", status=Device.Status.DECOMMISSIONED)
    return {"resnet-1": resnet_1, "resnet-2": resnet_2}


def test_it_lists_devices_with_their_state(client_for, fleet):
    ModelSlot.objects.filter(device__device_id="cam-a").update(version=fleet["resnet-2"], sequence=3,
                                                               source="distribution:7")

    response = client_for("Viewer").get("/api/v1/devices")

    assert ids(response) == ["cam-a", "cam-b", "gw-c", "old-d"]
    first = response.json()["results"][0]
    [slot] = first["slots"]
    assert (slot["model"], slot["state"], slot["sequence"], slot["refused_reason"]) == ("resnet", "installing", 3,
                                                                                        None)
    assert slot["running"] == {"model_id": "resnet-1.0.0", "version": "1.0.0", "sha256": fleet["resnet-1"].sha256,
                               "reported_at": None}
    assert slot["desired"] == {"action": "install", "version": "resnet-2.0.0", "rollback": False, "set_at": None,
                               "source": "distribution:7", "reason": ""}
    assert [(s["model"], s["state"], (s["running"] or {}).get("model_id"))
            for s in response.json()["results"][1]["slots"]] == [("magika", "installing", None),
                                                                 ("resnet", "unmanaged", "resnet-2.0.0")]
    assert first["capabilities"] == {"cpu_cores": None, "memory_mb": 2048, "storage_gb": None, "gpu": None}
    assert first["online"] is True and first["tags"] == ["lobby", "gen2"]
    assert response.json()["results"][3]["slots"] == []


@pytest.mark.parametrize(("query", "expected"), [
    ("region=eu-west", ["cam-a", "gw-c"]),
    ("device_type=gateway", ["gw-c", "old-d"]),
    ("tag=gen2", ["cam-a", "gw-c"]),
    ("tag=gen2,lobby", ["cam-a"]),
    ("status=offline&status=decommissioned", ["cam-b", "old-d"]),
    ("online=true", ["cam-a", "gw-c"]),
    ("online=false", ["cam-b", "old-d"]),
    ("min_memory_mb=2048", ["cam-a", "cam-b"]),
    ("model=resnet", ["cam-a", "cam-b", "gw-c"]),  # runs it, or should (gw-c)
    ("model=magika", ["cam-b"]),
    ("model=ghost", []),
    ("version=resnet-2.0.0", ["cam-b"]),
    ("version=1.0.0", ["cam-a", "gw-c"]),
    ("model=yolo&version=1.0.0", ["gw-c"]),
    ("model=resnet&version=1.0.0", ["cam-a"]),
    ("desired_version=resnet-2.0.0", ["gw-c"]),
    ("desired_version=3.0.0", ["cam-b"]),
    ("model=resnet&desired_version=3.0.0", []),
    ("version=9.9.9", []),
    ("search=CAM", ["cam-a", "cam-b"]),
    ("search=door", ["cam-b"]),
    ("search=nothing-like-it", []),
    ("region=eu-west&online=true&min_memory_mb=1000", ["cam-a"]),
])
def test_it_filters(client_for, fleet, query, expected):
    assert ids(client_for("Viewer").get(f"/api/v1/devices?{query}")) == expected


@pytest.mark.parametrize(("ordering", "expected"), [
    ("-device_id", ["old-d", "gw-c", "cam-b", "cam-a"]),
    ("memory_mb", ["gw-c", "cam-a", "cam-b", "old-d"]),
    ("region", ["cam-a", "gw-c", "cam-b", "old-d"]),
    ("registered_at", ["cam-a", "cam-b", "gw-c", "old-d"]),
])
def test_it_orders(client_for, fleet, ordering, expected):
    assert ids(client_for("Viewer").get(f"/api/v1/devices?ordering={ordering}")) == expected


def test_it_orders_by_last_seen(client_for, make_device):
    now = timezone.now()
    make_device(device_id="a", last_seen=now)
    make_device(device_id="b", last_seen=now - timedelta(minutes=5))

    assert ids(client_for("Viewer").get("/api/v1/devices?ordering=last_seen")) == ["b", "a"]


@pytest.mark.parametrize("query", ["ordering=colour", "status=exploded", "min_memory_mb=lots", "online=maybe"])
def test_it_answers_bad_filters_in_the_error_format(client_for, query):
    response = client_for("Viewer").get(f"/api/v1/devices?{query}")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"][0]["field"] in query


def test_it_paginates(client_for, make_device):
    for index in range(7):
        make_device(device_id=f"dev-{index}")
    client = client_for("Viewer")

    first = client.get("/api/v1/devices?page_size=3").json()
    last = client.get("/api/v1/devices?page_size=3&page=3").json()

    assert first["count"] == 7 and first["next"] and first["previous"] is None
    assert [d["device_id"] for d in first["results"]] == ["dev-0", "dev-1", "dev-2"]
    assert [d["device_id"] for d in last["results"]] == ["dev-6"] and last["next"] is None
    assert client.get("/api/v1/devices?page=9").status_code == 404


def test_it_uses_the_same_queries_for_one_device_or_many(client_for, make_device, make_version, make_slot,
                                                         django_assert_max_num_queries):
    client = client_for("Viewer")
    version, other = make_version(), make_version("magika", "1.0.0")
    for index in range(30):
        device = make_device(device_id=f"dev-{index:02d}")
        make_slot(device, running=version, desired=version)
        make_slot(device, running=other)

    # auth (user + permissions), count, page, slots: no query per device or per slot
    with django_assert_max_num_queries(7):
        response = client.get("/api/v1/devices?page_size=30")

    assert len(response.json()["results"]) == 30
