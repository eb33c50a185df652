"""Validation runs on the real pipeline: claim, statuses, gates, baseline, test sets, approvals, the API."""

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from models_app.models import ModelVersion, ValidationReport
from models_app.tasks import model_version_validate
from models_app.validation_runs import validation_request, validation_run, version_is_distributable
from tests.artifacts import onnx_model_bytes, tflite_bytes
from tests.models_app.conftest import npz_bytes, upload, upload_test_set

pytestmark = pytest.mark.django_db


def uploaded(client, **fields) -> ModelVersion:
    response = upload(client, fields.pop("content", None) or onnx_model_bytes(), **fields)
    assert response.status_code == 202, response.json()
    return ModelVersion.objects.get(model_id=response.json()["model_id"])


def run_latest(version: ModelVersion) -> ValidationReport:
    report = version.validation_reports.first()
    return validation_run(report_id=report.pk)


def test_an_upload_queues_a_validation_that_passes_the_default_gates(developer):
    version = uploaded(developer)
    assert version.validation_reports.get().status == "pending"

    report = run_latest(version)

    version.refresh_from_db()
    assert (report.status, version.status) == ("passed", "passed")
    assert version_is_distributable(version)
    assert [s["name"] for s in report.result["steps"]][:5] == ["integrity", "format", "signature", "load",
                                                                "benchmark"]
    assert report.result["metrics"]["inferences"] >= 100
    gates = {g["name"]: g for g in report.result["gates"]}
    assert gates["max_latency_p99_ms"]["passed"] is True and gates["min_accuracy"]["passed"] is None
    assert report.result["environment"]["onnxruntime"]


def test_it_runs_twice_with_the_same_result(developer):
    version = uploaded(developer)
    report = version.validation_reports.get()

    assert model_version_validate(report.pk) == "passed"
    assert model_version_validate(report.pk) is None  # already done: nothing runs again
    report.refresh_from_db()
    assert report.attempts == 1


def test_a_run_abandoned_by_a_dead_worker_is_claimed_again(developer, settings):
    version = uploaded(developer)
    report = version.validation_reports.get()
    ValidationReport.objects.filter(pk=report.pk).update(status="running", started_at=timezone.now())
    assert validation_run(report_id=report.pk) is None  # someone is (still) on it

    ValidationReport.objects.filter(pk=report.pk).update(started_at=timezone.now() - timedelta(hours=1))
    assert validation_run(report_id=report.pk).status == "passed"


def test_a_broken_gate_fails_the_version_until_an_admin_overrides_it(developer, client_for):
    version = uploaded(developer)
    ValidationReport.objects.filter(version=version).delete()
    report = validation_request(version=version, gate_overrides={"max_latency_p99_ms": 0.0001}, queue=False)

    report = validation_run(report_id=report.pk)

    version.refresh_from_db()
    assert (report.status, version.status) == ("failed", "failed")
    gate = next(g for g in report.result["gates"] if g["name"] == "max_latency_p99_ms")
    assert gate["passed"] is False and gate["measured"] > gate["threshold"]
    assert not version_is_distributable(version)
    admin = client_for("Admin")
    too_short = admin.post(f"/api/v1/models/{version.model_id}/approve", {"reason": "ok"}, format="json")
    approved = admin.post(f"/api/v1/models/{version.model_id}/approve",
                          {"reason": "Latency budget is relaxed for the pilot fleet."}, format="json")
    assert too_short.status_code == 400
    assert approved.status_code == 200 and approved.json()["distributable"] is True
    assert approved.json()["approval_reason"].startswith("Latency budget")


def test_frameworks_that_cannot_run_here_need_an_admin_approval(developer):
    version = uploaded(developer, content=tflite_bytes(), framework="tflite", filename="m.tflite")

    report = run_latest(version)

    version.refresh_from_db()
    assert (report.status, version.status) == ("not_executed", "needs_approval")
    statuses = {s["name"]: s["status"] for s in report.result["steps"]}
    assert statuses["integrity"] == "passed" and statuses["benchmark"] == "not_executed"


def test_the_previous_passed_version_is_the_baseline(developer):
    first = uploaded(developer, version="1.0.0")
    run_latest(first)
    second = uploaded(developer, version="1.1.0", content=onnx_model_bytes(hidden=16))

    report = run_latest(second)

    assert report.baseline.version == first
    assert report.result["baseline_source"] == "resnet-1.0.0, measured side by side in the same process"
    deltas = report.result["baseline_deltas"]
    assert deltas["latency_increase"] is not None and deltas["latency_p_value"] is not None
    assert report.result["profiles"][0]["baseline"]["metrics"]["inferences"] >= 100


def test_it_measures_accuracy_on_an_attached_test_set(developer):
    version = uploaded(developer)
    inputs = np.random.default_rng(3).random((20, 4), dtype=np.float32)
    assert upload_test_set(developer, "resnet", content=npz_bytes(inputs=inputs, labels=np.zeros(20, np.int64))
                           ).status_code == 201
    ValidationReport.objects.filter(version=version).delete()

    response = developer.post(f"/api/v1/models/{version.model_id}/validate", {"test_set": "holdout"}, format="json")
    report = validation_run(report_id=response.json()["validation_id"])

    assert response.status_code == 202
    assert report.test_set.name == "holdout"
    assert report.result["metrics"]["accuracy_samples"] == 20
    assert 0 <= report.result["metrics"]["accuracy"] <= 1


def test_the_api_shows_the_latest_report_and_the_history(developer):
    version = uploaded(developer)
    pending = developer.get(f"/api/v1/models/{version.model_id}/validation-report").json()
    again = developer.post(f"/api/v1/models/{version.model_id}/validate", {}, format="json")
    run_latest(version)

    latest = developer.get(f"/api/v1/models/{version.model_id}/validation-report").json()
    history = developer.get(f"/api/v1/models/{version.model_id}/validation-report?all=true").json()

    assert pending["status"] == "pending"
    assert again.json()["validation_id"] == pending["validation_id"]  # one validation at a time per version
    assert latest["status"] == "passed" and latest["metrics"]["latency_p99_ms"] > 0
    assert history["count"] == 1
    assert developer.get(f"/api/v1/models/{version.model_id}").json()["status"] == "passed"


def test_it_rejects_unknown_gates_and_approvals_that_are_not_needed(developer, client_for):
    version = uploaded(developer)
    run_latest(version)

    unknown = developer.post(f"/api/v1/models/{version.model_id}/validate", {"gates": {"max_vibes": 1}},
                             format="json")
    not_needed = client_for("Admin").post(f"/api/v1/models/{version.model_id}/approve",
                                          {"reason": "Because we can, really."}, format="json")

    assert unknown.status_code == 400 and unknown.json()["error"]["details"][0]["field"] == "gates.max_vibes"
    assert not_needed.status_code == 409


def test_a_malformed_test_set_is_refused_and_leaves_nothing(developer, stored_keys):
    uploaded(developer)
    before = stored_keys()

    bad = upload_test_set(developer, "resnet", content=b"not an npz")
    no_inputs = upload_test_set(developer, "resnet", name="noinputs", content=npz_bytes(labels=np.zeros(2, np.int64)))

    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_TEST_SET"
    assert no_inputs.status_code == 400 and "needs the model's inputs" in no_inputs.json()["error"]["message"]
    assert stored_keys() == before
    assert upload_test_set(developer, "resnet").status_code == 201
    assert upload_test_set(developer, "resnet").status_code == 409
