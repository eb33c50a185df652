"""The dashboard page and its fragments through Django's test client: who may see them, what they show."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from devices.models import ModelSlot
from rollouts.admin import progress_bar
from rollouts.selectors import distribution_status
from tests.observability.dashboard_data import simulated_rollout

pytestmark = pytest.mark.django_db
URL = "/admin/dashboard/"


@pytest.fixture
def console(make_user):
    def login(role: str | None = "Viewer") -> Client:
        client = Client()
        client.force_login(make_user(role, is_staff=True))
        return client

    return login


@pytest.fixture
def rollout(make_fleet, make_version):
    return simulated_rollout(make_fleet, make_version)


def figure(page: str, scope: str, name: str) -> str:
    """The text of the first data-figure=name after the element whose attribute is `scope`."""
    start = page.index(scope)
    return re.search(rf'data-figure="{name}">([^<]*)<', page[start:]).group(1).strip()


def test_anonymous_people_are_sent_to_the_login_page():
    for url in (URL, f"{URL}?fragment=1", f"{URL}distributions/1/charts/"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response.url.startswith("/admin/login/?next=/admin/dashboard/")


def test_a_console_user_without_a_role_may_not_see_it(console):
    client = console(None)
    assert client.get(URL).status_code == 403
    assert 'id="dashboard-link"' not in client.get("/admin/").content.decode()


@pytest.mark.parametrize("role", ["Viewer", "ModelDeveloper", "Operator", "Admin"])
def test_every_console_role_finds_it_from_the_index(console, role):
    client = console(role)
    index = client.get("/admin/").content.decode()
    assert 'href="/admin/dashboard/" id="dashboard-link"' in index
    assert client.get(URL).status_code == 200


def test_a_viewer_sees_the_fleet_the_versions_and_the_distributions(console, rollout):
    response = console().get(URL)
    assert response.status_code == 200
    page = response.content.decode()

    assert 'id="dashboard" data-refresh-url="/admin/dashboard/?fragment=1" data-refresh-ms="10000"' in page
    assert (figure(page, 'data-region="eu"', "online"), figure(page, 'data-region="eu"', "offline")) == ("12", "0")
    assert (figure(page, 'data-region="us"', "online"), figure(page, 'data-region="us"', "offline")) == ("5", "3")
    assert (figure(page, 'data-region="ap"', "online"), figure(page, 'data-region="ap"', "offline")) == ("8", "0")
    assert (figure(page, 'data-region="*"', "online"), figure(page, 'data-region="*"', "offline")) == ("25", "3")

    versions = page[page.index('id="fleet-versions"'):page.index('class="hs-section"')]
    [(model, section)] = re.findall(r'<div class="hs-model-versions" data-model="([\w-]+)">(.*?)</table>', versions,
                                    re.S)
    shown = {region: dict(part.rsplit(": ", 1) for part in re.sub(r"<[^>]+>", "", summary).split(" · "))
             for region, summary in re.findall(r'<tr data-region="(\w+)">.*?<div class="hs-bar-summary">(.*?)</div>',
                                               section, re.S)}
    expected: dict[str, dict[str, str]] = {}
    # A slot the ap canary offered to a device that ran nothing runs nothing yet: no version in the field.
    for slot in (ModelSlot.objects.exclude(device__status="decommissioned").exclude(running_version=None)
                 .select_related("device", "running_version")):
        counts = expected.setdefault(slot.device.region, {})
        counts[slot.running_version.model_id] = str(int(counts.get(slot.running_version.model_id, "0")) + 1)
    assert model == "resnet" and shown == expected
    assert shown["ap"] == {"resnet-1.0.0": "6"}  # the two that report nothing run no model


def test_each_distribution_shows_the_status_api_figures_and_its_charts(console, rollout):
    page = console().get(URL).content.decode()
    running, rolled_back = rollout.running, rollout.rolled_back

    # Open ones first, then those finished lately.
    assert page.index(f'id="distribution-{running.pk}"') < page.index(f'id="distribution-{rolled_back.pk}"')
    section = page[page.index(f'id="distribution-{running.pk}"'):page.index(f'id="distribution-{rolled_back.pk}"')]
    status = distribution_status(distribution=running)
    for name in ("targeted", "active", "installing", "pending", "failed", "rolled_back"):
        assert figure(section, "<table", name) == str(status["progress"][name])
    assert f'data-summary="distribution-{running.pk}">{progress_bar(status["progress"])["summary"]}<' in section
    assert "stage 1 of 2: Canary 25 %, installing" in section
    assert "p99 latency" in section and "new version" in section  # the live comparison

    for chart in ("latency", "errors"):
        svg = re.search(rf'<svg class="hs-chart" data-chart="{chart}".*?</svg>', section, re.S).group(0)
        assert len(re.findall(r'<polyline class="series new"', svg)) == 1
        assert len(re.findall(r'<polyline class="series baseline"', svg)) == 1
        assert svg.count('class="marker stage"') == 1 and 'class="marker rollback"' not in svg

    closed = page[page.index(f'id="distribution-{rolled_back.pk}"'):]
    assert 'class="rollout-status rolled_back"' in closed
    assert closed.count('class="marker rollback"') == 2  # one per chart
    assert "p99 latency regression" in closed


def test_the_fragment_is_what_the_script_swaps_in(console, rollout):
    response = console().get(f"{URL}?fragment=1")
    assert response.status_code == 200 and response["X-Dashboard-Fragment"] == "10000"
    body = response.content.decode()
    assert "<html" not in body and 'id="fleet-regions"' in body and f'id="distribution-{rollout.running.pk}"' in body


def test_the_distribution_page_shows_its_charts_and_redraws_them_while_data_may_come(console, rollout):
    client = console()
    page = client.get(f"/admin/rollouts/distribution/{rollout.running.pk}/change/").content.decode()
    charts_url = f"/admin/dashboard/distributions/{rollout.running.pk}/charts/"
    assert f'id="distribution-charts" data-refresh-url="{charts_url}" data-refresh-ms="30000"' in page
    assert 'data-chart="latency"' in page and 'data-chart="errors"' in page
    assert "hotswap/dashboard.js" in page

    fragment = client.get(charts_url)
    assert fragment.status_code == 200 and fragment["X-Dashboard-Fragment"] == "30000"
    assert '<polyline class="series new"' in fragment.content.decode()

    # Rolled back 25 minutes ago: nothing more will come, so the page stops redrawing.
    closed = client.get(f"/admin/rollouts/distribution/{rollout.rolled_back.pk}/change/").content.decode()
    assert 'data-refresh-ms="0"' in closed and closed.count('class="marker rollback"') == 2
    assert client.get(f"/admin/dashboard/distributions/{rollout.rolled_back.pk}/charts/")[
        "X-Dashboard-Fragment"] == "0"
    assert client.get("/admin/dashboard/distributions/999999/charts/").status_code == 404


def test_the_number_of_queries_does_not_grow_with_the_fleet(console, make_fleet, make_version):
    client = console()
    old = make_version(version="1.0.0")
    make_fleet({"eu": 3, "us": 2}, running=old)
    with CaptureQueriesContext(connection) as small:
        client.get(URL)
    make_fleet({"eu": 30, "us": 20, "ap": 10}, running=old)
    with CaptureQueriesContext(connection) as large:
        client.get(URL)
    assert len(large) == len(small)
