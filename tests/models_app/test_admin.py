"""The console: versions listed with checksum, size, status, uploader; upload through the same service."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from models_app.models import ModelVersion
from tests.artifacts import onnx_model_bytes
from tests.models_app.conftest import sha256

pytestmark = pytest.mark.django_db



def _upload(console, content, **fields):
    data = {"name": "console-model", "version": "1.0.0", "framework": "onnx", "sha256": "", "description": "",
            "artifact": SimpleUploadedFile("m.onnx", content), **fields}
    return console.post("/admin/models_app/modelversion/upload/", data)


def test_it_uploads_through_the_admin_and_lists_the_version(console, stored_keys):
    content = onnx_model_bytes()
    before = stored_keys()

    response = _upload(console, content, sha256=sha256(content))

    version = ModelVersion.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/models_app/modelversion/{version.pk}/change/"
    assert len(stored_keys() - before) == 1
    listing = console.get("/admin/models_app/modelversion/").content.decode()
    assert "console-model-1.0.0" in listing and sha256(content)[:12] in listing and "uploaded" in listing
    detail = console.get(response["Location"]).content.decode()
    assert sha256(content) in detail and "s3://" in detail


def test_it_shows_the_service_error_and_stores_nothing_on_a_bad_checksum(console, stored_keys):
    before = stored_keys()

    response = _upload(console, onnx_model_bytes(), sha256="a" * 64)

    assert response.status_code == 200
    assert "Checksum mismatch" in response.content.decode()
    assert not ModelVersion.objects.exists()
    assert stored_keys() == before


def test_it_deletes_through_the_service(console, s3):
    _upload(console, onnx_model_bytes())
    version = ModelVersion.objects.get()
    client, bucket = s3

    console.post(f"/admin/models_app/modelversion/{version.pk}/delete/", {"post": "yes"})

    assert not ModelVersion.objects.exists()
    assert client.list_objects_v2(Bucket=bucket, Prefix=version.storage_key).get("KeyCount") == 0


def test_it_deprecates_selected_versions(console):
    _upload(console, onnx_model_bytes())
    version = ModelVersion.objects.get()

    console.post("/admin/models_app/modelversion/", {"action": "deprecate_selected", "_selected_action": [version.pk]})

    version.refresh_from_db()
    assert version.status == "deprecated"


def test_it_refuses_the_upload_page_to_a_viewer(make_user):
    client = Client()
    client.force_login(make_user("Viewer", is_staff=True))

    assert client.get("/admin/models_app/modelversion/upload/").status_code == 403


def test_it_shows_a_validation_report_as_tables_and_lets_an_admin_approve(console):
    from models_app.models import ValidationReport
    from models_app.validation_runs import validation_request, validation_run

    _upload(console, onnx_model_bytes())
    version = ModelVersion.objects.get()
    ValidationReport.objects.filter(version=version).delete()
    report = validation_run(report_id=validation_request(
        version=version, gate_overrides={"max_latency_p99_ms": 0.0001}, queue=False).pk)

    page = console.get(f"/admin/models_app/validationreport/{report.pk}/change/").content.decode()
    form = console.post("/admin/models_app/modelversion/", {"action": "approve_selected",
                                                            "_selected_action": [version.pk]})
    console.post("/admin/models_app/modelversion/", {"action": "approve_selected", "_selected_action": [version.pk],
                                                     "reason": "Pilot fleet tolerates the latency."})

    assert "max_latency_p99_ms" in page and "FAIL" in page and "onnxruntime" in page
    assert b"Approve for distribution" in form.content
    version.refresh_from_db()
    assert version.status == "failed" and version.approval_reason == "Pilot fleet tolerates the latency."


def test_a_profile_the_model_contradicts_is_refused_in_the_console_and_nothing_is_queued(console):
    from models_app.models import ValidationReport
    from models_app.validation_runs import validation_run

    _upload(console, onnx_model_bytes())
    version = ModelVersion.objects.get()
    validation_run(report_id=version.validation_reports.get().pk)  # the model's inputs are now known

    response = console.post("/admin/models_app/modelversion/", {
        "action": "validate_with_profiles", "_selected_action": [version.pk],
        "input_profiles": '[{"name": "big", "inputs": {"input": {"shape": [1, 4, 4]}}}]'}, follow=True)

    # (the console capitalises the message's first letter)
    assert "Console-model-1.0.0: input_profiles[0].inputs.input.shape: Rank 3 contradicts the model&#x27;s [1, 4]" \
        in response.content.decode()
    version.refresh_from_db()
    assert version.input_profiles == [] and not version.validation_reports.filter(
        status=ValidationReport.Status.PENDING).exists()


def test_a_models_input_profiles_and_tolerances_are_checked_when_edited_in_the_console(console):
    from models_app.models import AIModel
    from models_app.validation_runs import validation_run

    _upload(console, onnx_model_bytes())
    validation_run(report_id=ModelVersion.objects.get().validation_reports.get().pk)
    ai_model = AIModel.objects.get()
    page = f"/admin/models_app/aimodel/{ai_model.pk}/change/"
    form = {"description": "", "task": "other", "tags": "", "quality_gates": "{}", "accuracy_metric": "top1",
            "versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0"}

    unknown = console.post(page, {**form, "input_profiles": '[{"name": "a", "inputs": {"image": {"shape": [1]}}}]',
                                  "output_tolerances": "{}"})
    negative = console.post(page, {**form, "input_profiles": "[]", "output_tolerances": '{"*": {"max_abs": -1}}'})
    saved = console.post(page, {**form, "input_profiles": '[{"name": "b2", "dims": {"batch": 2}}]',
                                "output_tolerances": '{"*": {"max_abs": 0.01}}'})

    assert "The model has no input &#x27;image&#x27; (inputs: input)." in unknown.content.decode()
    assert "non-negative number or null" in negative.content.decode()
    assert saved.status_code == 302
    ai_model.refresh_from_db()
    assert ai_model.input_profiles == [{"name": "b2", "dims": {"batch": 2}}]
    assert ai_model.output_tolerances == {"*": {"max_abs": 0.01}}
