"""The fleet console: device list and search, pre-register, decommission, credentials, desired version, keys."""

import re
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from devices import selectors
from devices.models import Device, DeviceCredential, EnrollmentKey, InstallReport, MetricWindow, ModelSlot

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(make_user):
    client = Client()
    client.force_login(make_user("Admin", is_staff=True))
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def act(console, action: str, devices, url: str = "/admin/devices/device/", **data):
    return console.post(url, {"action": action, "_selected_action": [d.pk for d in devices], "index": 0, **data})


def test_it_lists_devices_with_status_running_and_desired_versions_of_each_model(console, make_device,
                                                                                   make_version):
    version, running = make_version("resnet", "2.0.0"), make_version("resnet", "1.0.0")
    magika = make_version("magika", "3.0.0")
    device = make_device(device_id="cam-1", region="eu-west")
    ModelSlot.objects.create(device=device, ai_model=version.ai_model, version=version, sequence=2,
                             running_version=running, reported_version="1.0.0")
    ModelSlot.objects.create(device=device, ai_model=magika.ai_model, remove=True, sequence=4,
                             running_version=magika, reported_version="3.0.0")
    make_device(device_id="gw-2", tags=["basement"])

    page = console.get("/admin/devices/device/").content.decode()

    assert "cam-1" in page and "eu-west" in page
    assert "resnet-1.0.0, magika-3.0.0" in page or "magika-3.0.0, resnet-1.0.0" in page  # running
    assert "magika: remove <small>#4</small>, resnet-2.0.0 <small>#2</small>" in page  # desired
    searched = console.get("/admin/devices/device/?q=basement").content.decode()
    assert "gw-2" in searched and "cam-1" not in searched
    filtered = console.get("/admin/devices/device/?status__exact=active&region=eu-west")
    assert filtered.status_code == 200


def test_it_preregisters_a_device_and_shows_its_credential_once(console):
    response = console.post("/admin/devices/device/add/", {
        "device_id": "cam-9", "name": "Dock", "device_type": "edge-camera", "region": "eu-west", "tags": "a,b",
        "cpu_cores": "", "memory_mb": "2048", "storage_gb": "", "gpu": "",
        "credentials-TOTAL_FORMS": "0", "credentials-INITIAL_FORMS": "0",
    }, follow=True)

    device = Device.objects.get(device_id="cam-9")
    assert (device.tags, device.memory_mb) == (["a", "b"], 2048)
    assert not device.slots.exists()  # it runs whatever it has until it checks in
    key = re.search(r"hsd_[0-9a-f]{8}_[\w-]+", " ".join(messages_of(response))).group(0)
    assert selectors.device_for_credential(raw_credential=key) == device


def test_it_refuses_a_reserved_device_id_in_the_form(console):
    response = console.post("/admin/devices/device/add/", {
        "device_id": "enroll", "credentials-TOTAL_FORMS": "0", "credentials-INITIAL_FORMS": "0",
    })

    assert response.status_code == 200 and "reserved" in response.content.decode()
    assert not Device.objects.exists()


def test_it_edits_descriptive_fields_through_the_service(console, make_device):
    device = make_device(device_id="cam-1", name="Old", cpu_percent=12.5)

    console.post(f"/admin/devices/device/{device.pk}/change/", {
        "name": "New", "device_type": "", "region": "us-east", "tags": "", "cpu_cores": "", "memory_mb": "",
        "storage_gb": "", "gpu": "", "credentials-TOTAL_FORMS": "0", "credentials-INITIAL_FORMS": "0",
    })

    device.refresh_from_db()
    assert (device.name, device.region, device.cpu_percent) == ("New", "us-east", 12.5)


def test_it_decommissions_selected_devices(console, make_enrolled_device):
    first, _ = make_enrolled_device()
    second, _ = make_enrolled_device()

    act(console, "decommission_selected", [first, second])

    assert set(Device.objects.values_list("status", flat=True)) == {"decommissioned"}
    assert not DeviceCredential.objects.filter(revoked_at__isnull=True).exists()


def test_it_issues_a_credential_to_one_device_and_shows_it_once(console, make_enrolled_device):
    device, old = make_enrolled_device()

    response = act(console, "issue_credential", [device], follow=True)

    key = re.search(r"hsd_[0-9a-f]{8}_[\w-]+", " ".join(messages_of(response))).group(0)
    assert selectors.device_for_credential(raw_credential=key) == device
    assert selectors.device_for_credential(raw_credential=old) is None


def test_it_issues_credentials_one_device_at_a_time(console, make_device):
    response = act(console, "issue_credential", [make_device(), make_device()], follow=True)

    assert "exactly one" in " ".join(messages_of(response))
    assert not DeviceCredential.objects.exists()


def test_it_asks_for_the_version_then_sets_the_desired_state(console, make_device, make_version):
    version = make_version("resnet", "1.1.0")
    make_version("resnet", "0.9.0", status="deprecated")
    magika = make_version("magika", "1.0.0")
    devices = [make_device(), make_device()]
    ModelSlot.objects.create(device=devices[0], ai_model=magika.ai_model, running_version=magika)

    page = act(console, "set_desired_version", devices)
    assert page.status_code == 200
    html = page.content.decode()
    assert "resnet-1.1.0" in html and "resnet-0.9.0" not in html and devices[0].device_id in html
    assert "This is a rollback" in html

    response = act(console, "set_desired_version", devices, apply="1", version=version.pk, reason="canary",
                   follow=True)

    slots = ModelSlot.objects.filter(device__in=devices, ai_model=version.ai_model)
    assert {(s.version_id, s.sequence, s.reason, s.source) for s in slots} == {(version.pk, 1, "canary", "manual")}
    assert "Desired version set to resnet-1.1.0 on 2 device(s)" in " ".join(messages_of(response))
    assert ModelSlot.objects.get(ai_model=magika.ai_model).version is None  # the other model stays


def test_it_shows_a_refusal_of_the_desired_state_service(console, make_device, make_version):
    old, new = make_version("resnet", "1.0.0"), make_version("resnet", "1.1.0")
    device = make_device(device_id="cam-ahead")
    ModelSlot.objects.create(device=device, ai_model=new.ai_model, running_version=new)

    refused = act(console, "set_desired_version", [device], apply="1", version=old.pk, follow=True)
    marked = act(console, "set_desired_version", [device], apply="1", version=old.pk, rollback="on", follow=True)

    assert ("resnet-1.0.0 is older than the version some devices run; set rollback to true to roll them back to it "
            "(cam-ahead: runs resnet-1.1.0" in " ".join(messages_of(refused)))
    assert "on 1 device(s)" in " ".join(messages_of(marked))
    assert ModelSlot.objects.get(device=device).rollback is True


def test_it_removes_a_model_from_the_selected_devices(console, make_device, make_version):
    resnet, magika = make_version("resnet", "1.0.0"), make_version("magika", "1.0.0")
    devices = [make_device(), make_device()]
    for version in (resnet, magika):
        ModelSlot.objects.create(device=devices[0], ai_model=version.ai_model, running_version=version)

    page = act(console, "remove_model", devices)
    response = act(console, "remove_model", devices, apply="1", model="resnet", reason="retired", follow=True)

    assert "Remove one model from 2 devices" in page.content.decode()
    assert "resnet to be removed on 1 device(s); 1 already had it" in " ".join(messages_of(response))
    assert list(ModelSlot.objects.filter(remove=True).values_list("device", "ai_model__name", "reason")) == [
        (devices[0].pk, "resnet", "retired")]


def test_it_creates_an_enrollment_key_and_shows_it_once(console):
    response = console.post("/admin/devices/enrollmentkey/add/", {"name": "eu cameras", "max_uses": "5"},
                            follow=True)

    key = EnrollmentKey.objects.get()
    raw = re.search(r"hse_[0-9a-f]{8}_[\w-]+", " ".join(messages_of(response))).group(0)
    assert raw.startswith(f"hse_{key.prefix}_") and key.max_uses == 5
    listing = console.get("/admin/devices/enrollmentkey/").content.decode()
    assert key.prefix in listing and "0 / 5" in listing
    detail = console.get(f"/admin/devices/enrollmentkey/{key.pk}/change/").content.decode()
    assert key.key_hash not in detail and key.key_hash not in listing


def test_it_refuses_an_enrollment_key_expiring_in_the_past(console):
    response = console.post("/admin/devices/enrollmentkey/add/", {"name": "k", "expires_at_0": "2001-01-01",
                                                                  "expires_at_1": "00:00:00"})

    assert response.status_code == 200 and "in the future" in response.content.decode()
    assert not EnrollmentKey.objects.exists()


def test_it_revokes_enrollment_keys_and_credentials(console, make_enrollment_key, make_enrolled_device):
    key, _raw = make_enrollment_key()
    device, raw = make_enrolled_device()

    act(console, "revoke_selected", [key], url="/admin/devices/enrollmentkey/")
    act(console, "revoke_selected", list(DeviceCredential.objects.filter(device=device)),
        url="/admin/devices/devicecredential/")

    key.refresh_from_db()
    assert key.revoked_at is not None
    assert selectors.device_for_credential(raw_credential=raw) is None
    assert DeviceCredential.objects.filter(device=device).exists()


def test_it_shows_credentials_inline_without_hashes(console, make_enrolled_device):
    device, _raw = make_enrolled_device()
    credential = DeviceCredential.objects.get(device=device)

    page = console.get(f"/admin/devices/device/{device.pk}/change/").content.decode()

    assert credential.prefix in page and credential.key_hash not in page


def test_it_shows_reports_read_only(console, make_device):
    device = make_device(device_id="cam-1")
    now = timezone.now()
    report = InstallReport.objects.create(device=device, model_name="resnet", model_version="1.0.0", status="failed",
                                          error="sha mismatch", reported_at=now)
    window = MetricWindow.objects.create(device=device, model_name="resnet", model_version="1.0.0",
                                         window_start=now - timedelta(minutes=1), window_end=now, inference_count=1,
                                         error_count=0, latency_p50_ms=1, latency_p95_ms=1, latency_p99_ms=1)

    assert "cam-1" in console.get("/admin/devices/installreport/?status__exact=failed").content.decode()
    assert console.get("/admin/devices/metricwindow/").status_code == 200
    assert console.get(f"/admin/devices/installreport/{report.pk}/change/").status_code == 200
    assert console.get(f"/admin/devices/metricwindow/{window.pk}/change/").status_code == 200
    assert console.get("/admin/devices/installreport/add/").status_code == 403


def test_it_offers_a_viewer_no_fleet_actions(make_user, make_device):
    client = Client()
    client.force_login(make_user("Viewer", is_staff=True))
    device = make_device()

    page = client.get("/admin/devices/device/").content.decode()
    act(client, "decommission_selected", [device])

    assert "decommission_selected" not in page and "set_desired_version" not in page
    assert Device.objects.get(pk=device.pk).status == "active"


def test_the_device_page_lists_its_slots_desired_against_running_with_the_last_report_and_window(console,
                                                                                              make_device,
                                                                                              make_version):
    device = make_device(device_id="cam-1")
    detector_1, detector_2 = make_version("detector", "1.0.0"), make_version("detector", "1.1.0")
    recogniser, orientation = make_version("recogniser", "2.0.0"), make_version("orientation", "1.0.0")
    now = timezone.now()
    ModelSlot.objects.create(device=device, ai_model=detector_2.ai_model, version=detector_2, sequence=3,
                             source="distribution:7", running_version=detector_1, reported_version="1.0.0",
                             refused_sequence=3, refused_reason="needs 4096 MB of memory")
    ModelSlot.objects.create(device=device, ai_model=recogniser.ai_model, version=recogniser, sequence=1,
                             running_version=recogniser, reported_version="2.0.0")
    ModelSlot.objects.create(device=device, ai_model=orientation.ai_model, remove=True, sequence=2,
                             running_version=orientation, reported_version="1.0.0")
    InstallReport.objects.create(device=device, model_name="detector", model_version="1.1.0", status="refused",
                                 sequence=3, error="needs 4096 MB of memory", reported_at=now)
    MetricWindow.objects.create(device=device, model_name="recogniser", model_version="2.0.0",
                                window_start=now - timedelta(minutes=1), window_end=now, inference_count=600,
                                error_count=2, latency_p50_ms=3, latency_p95_ms=5, latency_p99_ms=7.5, accuracy=0.93)

    page = console.get(f"/admin/devices/device/{device.pk}/change/").content.decode()

    rows = dict(re.findall(r'<tr data-model="([\w-]+)">(.*?)</tr>', page, re.S))
    assert list(rows) == ["detector", "orientation", "recogniser"]
    assert "detector-1.1.0 <small>#3</small><br><small>by distribution:7</small>" in rows["detector"]
    assert "Refused: needs 4096 MB of memory" in rows["detector"] and "refused 1.1.0 <small>#3" in rows["detector"]
    assert "orientation: remove <small>#2</small>" in rows["orientation"] and "Removing" in rows["orientation"]
    assert "In sync" in rows["recogniser"]
    assert "600 inferences, 2 errors, p99 7.5 ms, accuracy 93.0%" in rows["recogniser"]
