"""The integrity scrub: an artifact altered at rest is found, marked corrupt, alerted and never shipped again."""

import copy
import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from devices.models import Device
from devices.services.desired_state import desired_state_set
from hotswap.exceptions import ApplicationError
from hotswap.lib.localservices import free_port
from models_app.models import ModelVersion
from models_app.scrub import CORRUPT_FOUND, artifacts_scrub
from models_app.storage import artifact_store
from models_app.tasks import artifacts_scrub as artifacts_scrub_task
from rollouts.services import distribution_create
from tests.devices.checkin_helpers import checkin, device_with_credential, registry_version

pytestmark = pytest.mark.django_db


def passed_version(version: str = "1.0.0", hidden: int = 8) -> ModelVersion:
    created, _content = registry_version(version=version, hidden=hidden)
    ModelVersion.objects.filter(pk=created.pk).update(status=ModelVersion.Status.PASSED)
    created.refresh_from_db()
    return created


def flip_one_byte(content: bytes) -> bytes:
    return content[:100] + bytes([content[100] ^ 0x01]) + content[101:]


def desired_on_a_device(version: ModelVersion) -> str:
    """A device told to run `version` while it was fine; returns its credential."""
    device, credential = device_with_credential("cam-scrub")
    desired_state_set(devices=Device.objects.filter(pk=device.pk), version=version, reason="before the scrub")
    return credential


def assert_never_shipped(version: ModelVersion, client_for, console, credential: str, etag_before: str) -> None:
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.CORRUPT
    assert "hash to" in version.scrub_error

    with pytest.raises(ApplicationError) as refused:
        distribution_create(version=version, strategy="direct")
    assert refused.value.code == "VERSION_NOT_DISTRIBUTABLE" and "SHA-256" in refused.value.message
    with pytest.raises(ApplicationError) as refused:
        desired_state_set(devices=Device.objects.all(), version=version, rollback=True, reason="try anyway")
    assert refused.value.code == "VERSION_NOT_DEPLOYABLE"

    answer = checkin(APIClient(), credential, etag=etag_before)
    assert answer.status_code == 200  # not a 304: what the device should do changed
    assert answer.json()["desired"] == []  # its slot is left out: it keeps what it runs, no pointer to bad bytes

    operator = client_for("Operator")
    download = operator.get(f"/api/v1/models/{version.model_id}/download")
    assert download.status_code == 409
    assert download.json()["error"]["code"] == "ARTIFACT_CORRUPT"
    shown = operator.get(f"/api/v1/models/{version.model_id}").json()
    assert shown["status"] == "corrupt" and shown["distributable"] is False

    listed = console.get("/admin/models_app/modelversion/")
    assert "corrupt: not shipped" in listed.content.decode()
    detail = console.get(f"/admin/models_app/modelversion/{version.pk}/change/").content.decode()
    assert version.scrub_error in detail


def test_it_marks_an_artifact_altered_on_s3_corrupt_and_refuses_it_on_every_path(s3, client_for, console, caplog):
    client, bucket = s3
    version = passed_version()
    intact = passed_version("1.1.0", hidden=9)
    credential = desired_on_a_device(version)
    etag_before = checkin(APIClient(), credential)["ETag"]
    stored = client.get_object(Bucket=bucket, Key=version.storage_key)["Body"].read()
    client.put_object(Bucket=bucket, Key=version.storage_key, Body=flip_one_byte(stored))

    found_before = CORRUPT_FOUND._value.get()
    with caplog.at_level(logging.ERROR, logger="hotswap.alerts"):
        result = artifacts_scrub()

    assert result.corrupt == [version.model_id] and result.checked == 2
    assert CORRUPT_FOUND._value.get() == found_before + 1
    assert [r.alert["model_id"] for r in caplog.records if hasattr(r, "alert")] == [version.model_id]
    intact.refresh_from_db()
    assert intact.status == ModelVersion.Status.PASSED and intact.scrubbed_at is not None
    assert_never_shipped(version, client_for, console, credential, etag_before)


def test_it_scrubs_the_local_disk_store_and_refuses_links_issued_before(settings, tmp_path, client_for, console):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    version = passed_version()
    credential = desired_on_a_device(version)
    etag_before = checkin(APIClient(), credential)["ETag"]
    link = client_for("Operator").get(f"/api/v1/models/{version.model_id}/download").json()["url"]
    path = artifact_store().storage.path(version.storage_key)
    with open(path, "rb") as handle:
        stored = handle.read()
    with open(path, "wb") as handle:
        handle.write(flip_one_byte(stored))

    assert artifacts_scrub().corrupt == [version.model_id]

    assert_never_shipped(version, client_for, console, credential, etag_before)
    served = APIClient().get(link)
    assert served.status_code == 409 and served.json()["error"]["code"] == "ARTIFACT_CORRUPT"


def test_it_marks_a_missing_artifact_corrupt(s3):
    client, bucket = s3
    version = passed_version()
    client.delete_object(Bucket=bucket, Key=version.storage_key)

    assert artifacts_scrub().corrupt == [version.model_id]
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.CORRUPT and "missing" in version.scrub_error


def test_it_changes_nothing_when_storage_does_not_answer(settings):
    version = passed_version()
    artifacts = copy.deepcopy(settings.STORAGES["artifacts"])
    artifacts["OPTIONS"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.STORAGES = {**settings.STORAGES, "artifacts": artifacts}
    settings.S3_MAX_ATTEMPTS = 1

    result = artifacts_scrub()

    assert result.storage_failed and result.checked == 0 and result.corrupt == []
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.PASSED and version.scrubbed_at is None  # tried again next run


def test_it_reads_within_its_budget_oldest_scrubbed_first_and_again_after_the_interval(settings):
    versions = [passed_version(f"1.{minor}.0", hidden=8 + minor) for minor in range(3)]
    now = timezone.now()

    scrubbed = []
    for minute in range(3):  # a 1-byte budget: one artifact per run
        artifacts_scrub(budget_bytes=1, now=now + timedelta(minutes=minute))
        scrubbed.append(set(ModelVersion.objects.filter(scrubbed_at__isnull=False).values_list("pk", flat=True)))
    assert [len(s) for s in scrubbed] == [1, 2, 3]
    assert artifacts_scrub(now=now + timedelta(minutes=3)).checked == 0  # all fresh

    later = now + timedelta(hours=settings.ARTIFACT_SCRUB_INTERVAL_HOURS, minutes=1)
    result = artifacts_scrub(budget_bytes=1, now=later)
    assert result.checked == 1
    first = next(iter(scrubbed[0]))
    assert ModelVersion.objects.get(pk=first).scrubbed_at == later  # the least recently checked goes first
    assert {v.pk for v in versions} == scrubbed[2]


def test_the_task_runs_twice_with_the_same_result(s3):
    client, bucket = s3
    version = passed_version()
    client.put_object(Bucket=bucket, Key=version.storage_key, Body=b"not the model any more")

    first = artifacts_scrub_task.apply().get()
    state = list(ModelVersion.objects.values_list("status", "scrub_error"))
    second = artifacts_scrub_task.apply().get()

    assert first["corrupt"] == [version.model_id] and second["corrupt"] == []
    assert list(ModelVersion.objects.values_list("status", "scrub_error")) == state
