"""The dashboard in real Chromium during a simulated rollout: what it shows matches the API, and it keeps up."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device
from rollouts.admin import progress_bar
from rollouts.orchestrator import distribution_advance
from tests.browser import ARTIFACTS, PASSWORD, WAIT_MS, chromium, console_page, expect, server  # noqa: F401 - fixtures
from tests.observability.dashboard_data import runs, simulated_rollout
from tests.rollouts.conftest import offered, report_installs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(chromium, server, make_user, request):  # noqa: F811 - fixtures from tests.browser
    """A Viewer's page on the dashboard; a screenshot of where it ended is kept under var/test-artifacts/."""
    user = make_user("Viewer", is_staff=True, password=PASSWORD)
    with console_page(chromium, server, user, start="/admin/", artifact=f"dashboard-{request.node.name}") as page:
        yield page


def api(page, url: str) -> dict:
    response = page.request.get(url)  # the browser's own session: the API accepts it like a token
    assert response.ok, response.text()
    return response.json()


def api_fleet(page) -> list[dict]:
    devices, url = [], "/api/v1/devices?page_size=500&status=active&status=offline"
    while url:
        answer = api(page, url)
        devices += answer["results"]
        url = answer["next"]
    return devices


def running_label(model: str, running: dict) -> str:
    return running["model_id"] or f"{model}-{running['version']}"


def assert_the_fleet_matches_the_api(page) -> None:
    fleet = api_fleet(page)
    rows = page.locator("#fleet-regions tbody tr[data-region]")
    shown = {row.get_attribute("data-region"): (int(row.locator('[data-figure="online"]').inner_text()),
                                                int(row.locator('[data-figure="offline"]').inner_text()))
             for row in rows.all()}
    assert set(shown) == {device["region"] for device in fleet}
    for region, figures in shown.items():
        online = api(page, f"/api/v1/devices?region={region}&online=true&page_size=1")["count"]
        offline = api(page, f"/api/v1/devices?region={region}&status=offline&page_size=1")["count"]
        assert figures == (online, offline), region

    versions = {}
    for section in page.locator("#fleet-versions [data-model]").all():
        for row in section.locator("tbody tr[data-region]").all():
            parts = (text.rsplit(": ", 1) for text in row.locator("[data-version]").all_inner_texts())
            versions[section.get_attribute("data-model"), row.get_attribute("data-region")] = Counter(
                {label: int(count) for label, count in parts})
    expected: dict[tuple[str, str], Counter] = {}
    for device in fleet:
        for slot in device["slots"]:
            if slot["running"]:
                key = (slot["model"], device["region"])
                expected.setdefault(key, Counter())[running_label(slot["model"], slot["running"])] += 1
    assert versions == expected


def assert_the_distribution_matches_the_api(page, distribution) -> dict:
    status = api(page, f"/api/v1/distributions/{distribution.pk}/status")
    panel = page.locator(f"#distribution-{distribution.pk}")
    for name in ("targeted", "active", "installing", "pending", "failed", "rolled_back"):
        assert panel.locator(f'[data-figure="{name}"]').inner_text() == str(status["progress"][name]), name
    expect(panel.locator(f'[data-summary="distribution-{distribution.pk}"]')).to_have_text(
        progress_bar(status["progress"])["summary"])
    if status["current_stage"] is not None:
        expect(panel.locator('[data-figure="stage"]')).to_contain_text(
            f"stage {status['current_stage'] + 1} of {len(status['stages'])}")
    return status


def test_the_dashboard_shows_a_rollout_as_the_api_does_and_keeps_up(page, make_fleet, make_version):
    rollout = simulated_rollout(make_fleet, make_version)
    running, rolled_back = rollout.running, rollout.rolled_back

    page.click("#dashboard-link")
    page.wait_for_url("**/admin/dashboard/")
    expect(page.locator("h1")).to_have_text("Dashboard")
    assert_the_fleet_matches_the_api(page)
    status = assert_the_distribution_matches_the_api(page, running)
    assert status["status"] == "running" and 0 < status["progress"]["active"] < status["progress"]["targeted"]
    assert_the_distribution_matches_the_api(page, rolled_back)

    # Both charts of the running canary: the new version against its baseline, its first stage's start.
    for chart in ("latency", "errors"):
        svg = page.locator(f'#distribution-{running.pk} svg[data-chart="{chart}"]')
        expect(svg.locator("polyline.series.new")).to_have_count(1)
        expect(svg.locator("polyline.series.baseline")).to_have_count(1)
        expect(svg.locator(".marker.stage")).to_have_count(1)
        assert svg.bounding_box()["width"] > 300  # drawn, not collapsed
        # The rolled-back canary's charts mark the rollback in red.
        rollback = page.locator(f'#distribution-{rolled_back.pk} svg[data-chart="{chart}"] .marker.rollback line')
        expect(rollback).to_have_count(1)
        assert rollback.evaluate("e => getComputedStyle(e).stroke") == "rgb(186, 33, 33)"  # --error-fg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-during-rollout.png"), full_page=True)
    assert (ARTIFACTS / "dashboard-during-rollout.png").stat().st_size > 10_000

    # The rollout moves on and two eu devices drop off: the page redraws itself within a refresh or so.
    page.evaluate("window.stayedOnThePage = true")
    now = timezone.now()
    late = offered(running, 0)
    report_installs(late, now=now)
    distribution_advance(distribution_id=running.pk, now=now + timedelta(seconds=1))
    runs([a.device for a in late], rollout.new)
    eu = Device.objects.filter(region="eu", status=Device.Status.ACTIVE).order_by("device_id")
    Device.objects.filter(pk__in=list(eu.values_list("pk", flat=True)[:2])).update(status=Device.Status.OFFLINE)
    expect(page.locator('#fleet-regions tr[data-region="eu"] [data-figure="offline"]')).to_have_text(
        "2", timeout=WAIT_MS)
    assert page.evaluate("window.stayedOnThePage") is True
    assert int(page.locator("#dashboard").get_attribute("data-refreshes")) >= 1
    assert_the_fleet_matches_the_api(page)
    status = assert_the_distribution_matches_the_api(page, running)
    assert status["progress"]["installing"] == 0

    # In the dark theme the charts keep to the admin's colours.
    page.emulate_media(color_scheme="dark")
    text = page.locator(f'#distribution-{running.pk} svg[data-chart="latency"] text.tick.y').first
    assert text.evaluate("e => getComputedStyle(e).fill") == "rgb(208, 208, 208)"  # --body-quiet-color
    page.screenshot(path=str(ARTIFACTS / "dashboard-dark.png"), full_page=True)

    # The distribution's own page has the same charts.
    page.click(f"#distribution-{rolled_back.pk} h2 a")
    page.wait_for_url(f"**/admin/rollouts/distribution/{rolled_back.pk}/change/")
    expect(page.locator("#distribution-charts .marker.rollback")).to_have_count(2)
    expect(page.locator("#distribution-charts .hs-rollback-note")).to_contain_text("p99 latency regression")
