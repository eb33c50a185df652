"""The hourly cleanup aborts multipart uploads and partial files that crashed processes left behind."""

import os
import time

import pytest

from models_app.storage import FileWriter
from models_app.tasks import artifact_abandoned_uploads_cleanup


@pytest.mark.django_db
def test_it_aborts_stale_multipart_uploads_and_is_idempotent(s3):
    client, bucket = s3
    upload = client.create_multipart_upload(Bucket=bucket, Key="artifacts/crashed")
    client.upload_part(Bucket=bucket, Key="artifacts/crashed", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"x" * 1024)

    assert artifact_abandoned_uploads_cleanup(older_than_hours=24) == 0  # too young to be abandoned
    first = artifact_abandoned_uploads_cleanup(older_than_hours=0)
    second = artifact_abandoned_uploads_cleanup(older_than_hours=0)

    assert first >= 1 and second == 0
    remaining = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert "artifacts/crashed" not in {u["Key"] for u in remaining}


def test_it_removes_stale_partial_files_on_the_filesystem(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    stale = FileWriter(tmp_path, "artifacts/old")
    stale.write(b"half")
    fresh = FileWriter(tmp_path, "artifacts/new")
    fresh.write(b"in progress")
    hour_ago = time.time() - 3600
    os.utime(stale._tmp, (hour_ago, hour_ago))

    assert artifact_abandoned_uploads_cleanup(older_than_hours=0.5) == 1
    assert artifact_abandoned_uploads_cleanup(older_than_hours=0.5) == 0
    assert not stale._tmp.exists() and fresh._tmp.exists()
