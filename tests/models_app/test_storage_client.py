"""The S3 client is one per process, shared by every thread of a web or Celery worker."""

import os
import threading

from models_app import storage
from models_app.storage import artifact_store


def test_threads_racing_at_start_share_one_client_that_really_talks_to_s3(monkeypatch, s3):
    monkeypatch.setattr(storage, "_s3_clients", {})
    monkeypatch.setattr(storage.storages, "_storages", {})  # as in a fresh worker: no storage instance yet
    start, clients = threading.Barrier(8), []

    def first_request():
        start.wait()
        clients.append(artifact_store().client)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({id(client) for client in clients}) == 1
    _client, bucket = s3
    clients[0].put_object(Bucket=bucket, Key="shared-client-check", Body=b"ok")
    assert artifact_store().exists("shared-client-check")
    artifact_store().delete("shared-client-check")
    assert not artifact_store().exists("shared-client-check")


def test_a_forked_child_makes_its_own_client(monkeypatch):
    parent = artifact_store().client
    monkeypatch.setattr(os, "getpid", lambda: -1)  # the pid a forked worker sees differs from its parent's

    assert artifact_store().client is not parent


def test_it_bounds_every_call_of_the_shared_client_by_the_s3_timeout_settings(settings):
    settings.S3_CONNECT_TIMEOUT, settings.S3_READ_TIMEOUT, settings.S3_MAX_ATTEMPTS = 2, 7, 4

    config = artifact_store().client.meta.config

    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert config.retries == {"total_max_attempts": 4, "mode": "standard"}  # 4 tries in all, not 1 + 4
    assert artifact_store().client is artifact_store().client  # still one per process for these settings
