"""Upload sessions against the real S3 server (SeaweedFS multipart) and on local storage: resume, the worker's
SHA-256 check, expiry, two users at once, and each kind of bad input answered in the error shape."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from devices.services.registry import device_register
from hotswap.lib.localservices import free_port
from models_app.models import ModelVersion, MultipartAbort, UploadSession
from models_app.shipping import version_refusal
from models_app.storage import artifact_store
from models_app.tasks import artifact_abandoned_uploads_cleanup, upload_sessions_expire
from models_app.upload_sessions import upload_session_abort
from models_app.validation_runs import validation_run
from tests.artifacts import onnx_model_bytes
from tests.models_app.conftest import part_of, send, start, upload

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


@pytest.fixture(scope="module")
def model_file() -> bytes:
    """A real ONNX model of three 5 MiB parts (the last one short)."""
    return onnx_model_bytes(big_initializer_bytes=11 * MB)


@pytest.fixture(autouse=True)
def _five_mib_parts(settings):
    settings.UPLOAD_PART_BYTES = 5 * MB
    # What is checked here is the worker's hash, not the benchmark: keep the validations short.
    settings.VALIDATION_WARMUP_RUNS, settings.VALIDATION_BENCHMARK_RUNS = 1, 10


@pytest.fixture
def new_keys(stored_keys):
    """What this test left in the shared bucket: objects and unfinished multipart uploads."""
    before = stored_keys()
    yield lambda: stored_keys() - before
    for session in UploadSession.objects.filter(status="open"):  # the bucket outlives the test's transaction
        upload_session_abort(session=session)


def complete(client, session: dict):
    return client.post(f"/api/v1/uploads/{session['id']}/complete")


def get(client, session: dict):
    return client.get(f"/api/v1/uploads/{session['id']}")


def stored_bytes(key: str) -> bytes:
    store = artifact_store()
    with store.open(key, store.size(key)) as handle:
        return handle.read()


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_rerun_resumes_sending_only_the_missing_parts_and_the_worker_verifies_the_bytes(developer, model_file,
                                                                                          new_keys, client_for):
    first = start(developer, model_file)
    assert first.status_code == 201
    session = first.json()
    assert (session["status"], session["storage"], session["part_count"], session["parts_done"]) == (
        "open", "s3", 3, [])
    send(developer, session, model_file, [3, 1])  # out of order, then the client is killed

    again = start(developer, model_file)  # a new run, with no local state

    assert again.status_code == 200
    assert (again.json()["id"], again.json()["parts_done"]) == (session["id"], [1, 3])
    send(developer, session, model_file, [2])
    done = complete(developer, session)
    assert done.status_code == 201, done.json()
    body = done.json()
    assert (body["status"], body["parts_done"]) == ("completed", [1, 2, 3])
    assert (body["model_version"]["model_id"], body["model_version"]["status"]) == ("llm-1.0.0", "uploaded")
    assert body["model_version"]["sha256_verified"] is False
    version = ModelVersion.objects.get(model_id="llm-1.0.0")
    assert stored_bytes(version.storage_key) == model_file
    device_register(device_id="edge-1")
    pin = client_for("Operator").put("/api/v1/devices/edge-1/desired", {"version": "llm-1.0.0"}, format="json")
    assert error(pin) == (400, "VERSION_NOT_DEPLOYABLE")  # an operator may pin an unvalidated version, not this
    assert "not been checked against its SHA-256" in pin.json()["error"]["message"]

    report = validation_run(report_id=version.validation_reports.get().pk)

    version.refresh_from_db()
    assert (report.status, version.status, version.sha256_verified) == ("passed", "passed", True)
    assert version_refusal(version) is None
    assert new_keys() == {version.storage_key}  # the object, and no multipart upload left


def test_a_part_replaced_on_the_way_is_caught_by_the_workers_hash_and_the_object_deleted(developer, model_file,
                                                                                       new_keys, client_for):
    session = start(developer, model_file).json()

    def tampered(content, session, number):
        data = part_of(content, session, number)
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:] if number == 2 else data

    send(developer, session, model_file, [1, 2, 3], body=tampered)
    send(developer, session, model_file, [3])  # a part sent again replaces the earlier copy: harmless
    assert complete(developer, session).status_code == 201
    version = ModelVersion.objects.get(model_id="llm-1.0.0")
    assert version.storage_key in new_keys()

    report = validation_run(report_id=version.validation_reports.get().pk)

    version.refresh_from_db()
    assert (report.status, version.status, version.sha256_verified) == ("failed", "corrupt", False)
    integrity = report.result["steps"][0]
    assert (integrity["name"], integrity["status"]) == ("integrity", "failed")
    assert f"not the declared {session['sha256']}" in integrity["detail"] and "deleted" in report.summary
    assert new_keys() == set()  # no object, no multipart upload
    assert "no longer matches its SHA-256" in version_refusal(version, unvalidated_ok=True)
    approval = client_for("Admin").post("/api/v1/models/llm-1.0.0/approve", {"reason": "ship it anyway, please"},
                                        format="json")
    assert error(approval) == (409, "APPROVAL_NOT_NEEDED")  # a corrupt version is never approved into shipping
    rerun = start(developer, model_file)  # the same file again: not "already uploaded"
    assert error(rerun) == (409, "VERSION_CORRUPT")
    assert "DELETE /api/v1/models/llm-1.0.0" in rerun.json()["error"]["message"]


def test_the_beat_task_aborts_expired_sessions_and_their_parts(developer, model_file, new_keys):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1, 2])
    fresh = start(developer, onnx_model_bytes(), name="other").json()
    UploadSession.objects.filter(pk=session["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert upload_sessions_expire() == 1

    assert not MultipartAbort.objects.exists()
    assert get(developer, session).json()["status"] == "expired"
    assert get(developer, fresh).json()["status"] == "open"
    assert new_keys() == {f"multipart:{UploadSession.objects.get(pk=fresh['id']).storage_key}"}
    assert error(developer.post(f"/api/v1/uploads/{session['id']}/parts", {"numbers": [3]},
                                format="json")) == (410, "UPLOAD_EXPIRED")
    assert error(complete(developer, session)) == (410, "UPLOAD_EXPIRED")
    assert start(developer, model_file).status_code == 201  # starting again is a new session


def test_a_session_expiring_mid_upload_answers_upload_expired_and_keeps_no_part(developer, model_file, new_keys):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1])
    UploadSession.objects.filter(pk=session["id"]).update(expires_at=timezone.now())

    response = developer.post(f"/api/v1/uploads/{session['id']}/parts", {"numbers": [2]}, format="json")

    assert error(response) == (410, "UPLOAD_EXPIRED")
    assert "expired" in response.json()["error"]["message"]
    assert new_keys() == set()


def test_two_users_upload_at_once_each_in_a_session_of_their_own(client_for, model_file, new_keys):
    alice, bob = client_for("ModelDeveloper"), client_for("ModelDeveloper")
    a = start(alice, model_file).json()
    b = start(bob, model_file).json()  # the same file: not alice's session to resume
    assert a["id"] != b["id"]
    puts = [(target, part_of(model_file, session, target["number"]))
            for client, session in ((alice, a), (bob, b))
            for target in client.post(f"/api/v1/uploads/{session['id']}/parts", {"numbers": [1, 2, 3]},
                                      format="json").json()["parts"]]
    with ThreadPoolExecutor(max_workers=6) as pool:  # all six parts at once, straight to S3
        answers = list(pool.map(lambda put: requests.put(put[0]["url"], data=put[1], timeout=30), puts))
    assert [answer.status_code for answer in answers] == [200] * 6

    assert error(get(bob, a)) == (404, "UPLOAD_NOT_FOUND")
    assert error(complete(bob, a)) == (404, "UPLOAD_NOT_FOUND")
    assert error(bob.delete(f"/api/v1/uploads/{a['id']}")) == (404, "UPLOAD_NOT_FOUND")
    assert error(bob.post(f"/api/v1/uploads/{a['id']}/parts", {"numbers": [1]}, format="json")) == (
        404, "UPLOAD_NOT_FOUND")
    first, second = complete(alice, a), complete(bob, b)

    assert (first.status_code, second.status_code) == (201, 200)  # bob's identical bytes are alice's version
    assert first.json()["model_version"]["model_id"] == second.json()["model_version"]["model_id"] == "llm-1.0.0"
    assert ModelVersion.objects.count() == 1
    version = ModelVersion.objects.get()
    assert new_keys() == {version.storage_key}  # bob's parts were aborted


def test_completing_with_parts_missing_or_the_wrong_size_lists_each_part(developer, model_file):
    session = start(developer, model_file).json()

    def short(content, session, number):
        return part_of(content, session, number)[:1000]

    send(developer, session, model_file, [1, 2], body=short)  # SeaweedFS takes it; complete does not
    send(developer, session, model_file, [1])

    response = complete(developer, session)

    assert error(response) == (400, "UPLOAD_INCOMPLETE")
    assert [d["field"] for d in response.json()["error"]["details"]] == ["parts[2]", "parts[3]"]
    assert "exactly 5242880" in response.json()["error"]["details"][0]["message"]
    assert get(developer, session).json()["parts_done"] == [1]
    send(developer, session, model_file, [2, 3])
    assert complete(developer, session).status_code == 201
    again = complete(developer, session)
    assert error(again) == (409, "UPLOAD_COMPLETED")
    assert again.json()["error"]["model_id"] == "llm-1.0.0"


def test_a_complete_that_died_after_s3_assembled_the_object_is_finished_by_the_next(developer, model_file, new_keys):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1, 2, 3])
    row = UploadSession.objects.get(pk=session["id"])
    # What a complete did before its process was killed: S3 assembled the object, no version was recorded.
    artifact_store().multipart_complete(row.storage_key, row.upload_id, row.part_count, row.part_bytes)

    done = complete(developer, session)

    assert done.status_code == 201, done.json()
    assert done.json()["model_version"]["model_id"] == "llm-1.0.0"
    assert new_keys() == {row.storage_key}


def test_bytes_that_are_no_model_end_the_session_with_nothing_stored(developer, new_keys):
    junk = b"\x07not a model" * (600 * 1024)
    session = start(developer, junk).json()
    send(developer, session, junk, range(1, session["part_count"] + 1))

    response = complete(developer, session)

    assert error(response) == (400, "INVALID_ARTIFACT")
    assert get(developer, session).json()["status"] == "aborted"
    assert new_keys() == set() and not ModelVersion.objects.exists()
    assert not MultipartAbort.objects.exists()  # nothing left for the cleanup task either


def test_abort_deletes_the_parts_and_ends_the_session(developer, model_file, new_keys):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1])

    assert developer.delete(f"/api/v1/uploads/{session['id']}").status_code == 204

    assert new_keys() == set()
    assert get(developer, session).json()["status"] == "aborted"
    assert error(complete(developer, session)) == (409, "UPLOAD_ABORTED")
    assert developer.delete(f"/api/v1/uploads/{session['id']}").status_code == 204


@pytest.mark.parametrize(("fields", "code", "field"), [
    ({"size": 21 * 1024**3}, "ARTIFACT_TOO_LARGE", "size"),
    ({"size": 0}, "VALIDATION_ERROR", "size"),
    ({"sha256": "xyz"}, "VALIDATION_ERROR", "sha256"),
    ({"version": "1.0"}, "VALIDATION_ERROR", "version"),
    ({"input_schema": [{"name": "x"}]}, "VALIDATION_ERROR", "input_schema"),
])
def test_a_bad_start_is_refused_and_starts_nothing(developer, fields, code, field, new_keys):
    response = start(developer, b"model", **fields)

    assert error(response) == (400, code)
    assert field in [d["field"] for d in response.json()["error"]["details"]]
    assert not UploadSession.objects.exists() and new_keys() == set()


def test_part_numbers_outside_the_upload_are_refused(developer, model_file):
    session = start(developer, model_file).json()

    for numbers in ([0], [4], [1, 1], []):
        response = developer.post(f"/api/v1/uploads/{session['id']}/parts", {"numbers": numbers}, format="json")
        assert error(response) == (400, "VALIDATION_ERROR"), numbers


def test_an_existing_version_with_other_bytes_is_a_conflict_and_the_same_bytes_are_done(developer, model_file):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1, 2, 3])
    assert complete(developer, session).status_code == 201

    assert error(start(developer, model_file[:-1] + b"\x00")) == (409, "VERSION_EXISTS")
    rerun = start(developer, model_file)
    assert rerun.status_code == 200
    assert (rerun.json()["status"], rerun.json()["model_version"]["model_id"]) == ("completed", "llm-1.0.0")


def test_s3_failing_answers_503_in_the_error_shape_and_the_session_resumes_after(developer, model_file, settings):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1])
    working = settings.STORAGES
    artifacts = copy.deepcopy(settings.STORAGES["artifacts"])
    artifacts["OPTIONS"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    settings.STORAGES = {**settings.STORAGES, "artifacts": artifacts}
    settings.S3_CONNECT_TIMEOUT, settings.S3_MAX_ATTEMPTS = 1, 1

    assert error(get(developer, session)) == (503, "STORAGE_UNAVAILABLE")
    assert error(complete(developer, session)) == (503, "STORAGE_UNAVAILABLE")
    assert error(start(developer, model_file, version="2.0.0")) == (503, "STORAGE_UNAVAILABLE")

    settings.STORAGES = working
    assert get(developer, session).json()["parts_done"] == [1]
    assert UploadSession.objects.filter(status="open").count() == 1


@pytest.fixture
def local_storage(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    return tmp_path


def test_local_storage_takes_parts_through_the_api_and_resumes(developer, model_file, local_storage):
    session = start(developer, model_file).json()
    assert session["storage"] == "local"
    send(developer, session, model_file, [2])
    url = f"/api/v1/uploads/{session['id']}/parts/1"
    wrong = developer.put(url, data=b"x" * 10, content_type="application/octet-stream")
    assert error(wrong) == (400, "PART_SIZE_MISMATCH")

    resumed = start(developer, model_file).json()
    assert (resumed["id"], resumed["parts_done"]) == (session["id"], [2])
    send(developer, session, model_file, [1, 3])
    done = complete(developer, session)

    assert done.status_code == 201, done.json()
    version = ModelVersion.objects.get(model_id="llm-1.0.0")
    assert (local_storage / version.storage_key).read_bytes() == model_file
    assert [path for path in local_storage.rglob("*") if path.is_file()] == [local_storage / version.storage_key]
    report = validation_run(report_id=version.validation_reports.get().pk)
    version.refresh_from_db()
    assert (report.status, version.sha256_verified) == ("passed", True)


def test_expired_local_sessions_leave_no_part_file(developer, model_file, local_storage):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1, 2])
    assert [path for path in local_storage.rglob("*") if path.is_file()]
    UploadSession.objects.filter(pk=session["id"]).update(expires_at=timezone.now())

    assert upload_sessions_expire() == 1

    assert not [path for path in local_storage.rglob("*") if path.is_file()]
    assert error(developer.put(f"/api/v1/uploads/{session['id']}/parts/3", data=part_of(model_file, session, 3),
                               content_type="application/octet-stream")) == (410, "UPLOAD_EXPIRED")


def test_s3_sessions_take_no_part_through_the_api(developer, model_file):
    session = start(developer, model_file).json()

    response = developer.put(f"/api/v1/uploads/{session['id']}/parts/1", data=part_of(model_file, session, 1),
                             content_type="application/octet-stream")

    assert error(response) == (409, "UPLOAD_PART_ELSEWHERE")


def test_the_upload_quota_counts_accepted_versions_not_calls(developer, settings, model_file, onnx_bytes):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "upload": "2/hour"}
    assert upload(developer, onnx_bytes, name="small").status_code == 202  # 1 of 2
    assert upload(developer, onnx_bytes, name="small").status_code == 200  # an idempotent retry: free
    for _ in range(3):  # rejected calls: free
        assert upload(developer, onnx_bytes, name="small", version="2.0.0", sha256="0" * 64).status_code == 400
    second = start(developer, model_file).json()
    third = start(developer, model_file, version="2.0.0").json()
    assert start(developer, model_file).status_code == 200  # resuming: free
    for numbers in ([1], [2], [3], [1, 2, 3]):  # part requests: free
        send(developer, second, model_file, numbers)
    send(developer, third, model_file, [1, 2, 3])

    assert complete(developer, second).status_code == 201  # 2 of 2
    refused = complete(developer, third)

    assert error(refused) == (429, "RATE_LIMITED") and int(refused["Retry-After"]) > 0
    assert get(developer, third).json()["status"] == "open"  # completes once the quota allows
    assert error(start(developer, model_file, version="3.0.0")) == (429, "RATE_LIMITED")
    assert error(upload(developer, onnx_bytes, name="small", version="3.0.0")) == (429, "RATE_LIMITED")


def test_the_stale_upload_cleanup_leaves_open_sessions_to_their_expiry(developer, model_file, new_keys):
    session = start(developer, model_file).json()
    send(developer, session, model_file, [1])

    artifact_abandoned_uploads_cleanup(older_than_minutes=0)

    assert get(developer, session).json()["parts_done"] == [1]
    assert len(new_keys()) == 1
