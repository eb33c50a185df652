"""The validation report in real Chromium: shapes, dtypes and their source per profile; re-validation at a profile."""

from __future__ import annotations

import json
import re

import pytest

from models_app.models import ModelVersion, ValidationReport
from models_app.validation_runs import validation_run
from tests.artifacts import spatial_onnx_bytes
from tests.browser import PASSWORD, chromium, console_page, expect, server  # noqa: F401 - fixtures
from tests.models_app.conftest import upload

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_report_shows_guessed_shapes_and_one_action_revalidates_at_a_declared_profile(
        chromium, server, make_user, client_for):  # noqa: F811 - fixtures from tests.browser
    assert upload(client_for("ModelDeveloper"), spatial_onnx_bytes(), name="detector").status_code == 202
    version = ModelVersion.objects.get(model_id="detector-1.0.0")
    guessed = validation_run(report_id=version.validation_reports.get().pk)
    user = make_user("ModelDeveloper", is_staff=True, password=PASSWORD)

    with console_page(chromium, server, user, start=f"/admin/models_app/validationreport/{guessed.pk}/change/",
                      artifact="validation-report-profiles") as page:
        profiles = page.locator(".field-profiles_table")
        expect(profiles).to_contain_text("x float32 [1, 3, 224, 224] (guessed)")
        expect(profiles).to_contain_text("shapes guessed")
        expect(profiles).to_contain_text("x[2] (height) = 224: a spatial dimension")
        expect(profiles).to_contain_text(
            re.compile(r"max_latency_p99_ms: not decisive \(measured [\d.]+, threshold 100\)"))
        expect(profiles).to_contain_text("Validate again with input profiles")

        page.goto("/admin/models_app/modelversion/")
        page.locator(f"input[name=_selected_action][value='{version.pk}']").check()
        page.select_option("select[name=action]", "validate_with_profiles")
        page.click("button[name=index]")
        page.fill("textarea[name=input_profiles]", json.dumps(
            [{"name": "96x96", "inputs": {"x": {"shape": [1, 3, 96, 96]}}}]))
        page.click("input[type=submit][value='Declare and validate']")
        expect(page.locator(".messagelist")).to_contain_text("Queued validation of detector-1.0.0")

        declared = validation_run(report_id=version.validation_reports.filter(
            status=ValidationReport.Status.PENDING).get().pk)
        page.goto(f"/admin/models_app/validationreport/{declared.pk}/change/")
        profiles = page.locator(".field-profiles_table")
        expect(profiles).to_contain_text("96x96")
        expect(profiles).to_contain_text("x float32 [1, 3, 96, 96] (declared)")
        expect(page.locator(".field-status")).to_contain_text("Passed")
