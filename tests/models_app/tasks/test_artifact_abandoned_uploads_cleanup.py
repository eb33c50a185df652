"""The cleanup (every 10 minutes) aborts multipart uploads and partial files that crashed processes left behind."""

import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from models_app.storage import FileWriter
from models_app.tasks import artifact_abandoned_uploads_cleanup


@pytest.mark.django_db
def test_it_aborts_stale_multipart_uploads_and_is_idempotent(s3):
    client, bucket = s3
    upload = client.create_multipart_upload(Bucket=bucket, Key="artifacts/crashed")
    client.upload_part(Bucket=bucket, Key="artifacts/crashed", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"x" * 1024)

    assert artifact_abandoned_uploads_cleanup(older_than_minutes=24 * 60) == 0  # too young to be abandoned
    first = artifact_abandoned_uploads_cleanup(older_than_minutes=0)
    second = artifact_abandoned_uploads_cleanup(older_than_minutes=0)

    assert first >= 1 and second == 0
    remaining = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert "artifacts/crashed" not in {u["Key"] for u in remaining}


@pytest.mark.django_db
def test_it_aborts_by_default_only_uploads_under_the_artifact_prefix_older_than_the_limit(s3, settings):
    client, bucket = s3
    old = client.create_multipart_upload(Bucket=bucket, Key="artifacts/2026/01/old")["UploadId"]
    other = client.create_multipart_upload(Bucket=bucket, Key="backups/not-ours")["UploadId"]
    limit = timedelta(minutes=settings.ARTIFACT_UPLOAD_STALE_MINUTES)
    try:
        assert artifact_abandoned_uploads_cleanup() == 0  # young: may be a live upload
        later = (timezone.now() + limit + timedelta(minutes=1)).isoformat()
        assert artifact_abandoned_uploads_cleanup(now=later) >= 1
        remaining = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
        assert other in remaining and old not in remaining
    finally:
        client.abort_multipart_upload(Bucket=bucket, Key="backups/not-ours", UploadId=other)


def test_it_removes_stale_partial_files_on_the_filesystem(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    stale = FileWriter(tmp_path, "artifacts/old")
    stale.write(b"half")
    fresh = FileWriter(tmp_path, "artifacts/new")
    fresh.write(b"in progress")
    hour_ago = time.time() - 3600
    os.utime(stale._tmp, (hour_ago, hour_ago))

    assert artifact_abandoned_uploads_cleanup(older_than_minutes=30) == 1
    assert artifact_abandoned_uploads_cleanup(older_than_minutes=30) == 0
    assert not stale._tmp.exists() and fresh._tmp.exists()
