"""The console's device page lists the device's model slots, in real Chromium."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import InstallReport
from tests.browser import PASSWORD, chromium, console_page, expect, server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_viewer_sees_each_slot_desired_against_running_with_its_state_and_last_report(
        chromium, server, make_user, make_device, make_version, make_slot):  # noqa: F811 - fixtures
    device = make_device(device_id="ocr-box-1")
    detector_1, detector_2 = make_version("text-detector", "1.0.0"), make_version("text-detector", "1.1.0")
    recogniser, orientation = make_version("recogniser", "2.0.0"), make_version("orientation", "1.0.3")
    make_slot(device, running=detector_1, desired=detector_2, sequence=4, refused_sequence=4,
              refused_reason="needs 4096 MB, has 2048 MB")
    make_slot(device, running=recogniser, desired=recogniser, sequence=2)
    make_slot(device, running=orientation, remove=True, sequence=1)
    InstallReport.objects.create(device=device, model_name="text-detector", model_version="1.1.0", status="refused",
                                 sequence=4, error="needs 4096 MB, has 2048 MB",
                                 reported_at=timezone.now() - timedelta(seconds=30))
    viewer = make_user("Viewer", is_staff=True, password=PASSWORD)

    with console_page(chromium, server, viewer, start=f"/admin/devices/device/{device.pk}/change/",
                      artifact="device-page-slots") as page:
        rows = page.locator("table.model-slots tbody tr")
        expect(rows).to_have_count(3)
        states = {row.get_attribute("data-model"): row.locator(".slot-state").inner_text() for row in rows.all()}

        assert states == {"orientation": "Removing", "recogniser": "In sync",
                          "text-detector": "Refused: needs 4096 MB, has 2048 MB"}
        detector = page.locator('table.model-slots tr[data-model="text-detector"]')
        expect(detector).to_contain_text("text-detector-1.1.0 #4")
        expect(detector).to_contain_text("refused 1.1.0 #4")
        assert detector.is_visible()
