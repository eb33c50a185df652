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
