"""The console's pages fit a laptop screen and show each role what it works with, in real Chromium."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, ModelSlot
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create
from tests.browser import PASSWORD, chromium, console_page, expect, server  # noqa: F401 - fixtures
from tests.devices.conftest import make_device, make_version  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 1400, 900  # a laptop screen


@pytest.fixture
def console(chromium, server, make_user, request):  # noqa: F811 - fixtures from tests.browser
    """console(role, start) -> a page of a user in that role at `start`, in a 1400 x 900 window."""
    pages = []

    def open_as(role: str, start: str):
        user = make_user(role, is_staff=True, password=PASSWORD)
        manager = console_page(chromium, server, user, start=start, width=WIDTH, height=HEIGHT,
                               artifact=re.sub(r"[^\w.-]+", "-", f"console-{request.node.name}-{len(pages)}"))
        pages.append(manager)
        return manager.__enter__()

    yield open_as
    for manager in reversed(pages):
        manager.__exit__(None, None, None)


@pytest.fixture
def busy_fleet(make_device, make_version):  # noqa: F811
    """Devices and distributions whose every column has something long in it, as a real fleet's have."""
    old = make_version(name="resnet50-imagenet-quantized", version="2.10.3")
    new = make_version(name="resnet50-imagenet-quantized", version="2.11.0-rc.1")
    other = make_version(name="resnet50-imagenet-quantized", version="2.11.0")
    now = timezone.now()
    plans = (("canary", {"percent": 10, "soak": "PT30M"}, None),
             ("ab_test", {"split": 50, "window": "PT1H"}, other),
             ("progressive", {"percentages": [10, 25, 50, 100], "soak": "PT10M"}, None))
    for n in range(12):
        make_device(device_id=f"warehouse-camera-{n:04d}", name=f"Loading dock camera {n} (north gate)",
                    device_type="edge-camera-jetson-orin", region=f"eu-central-frankfurt-{n % len(plans)}",
                    last_seen=now)
    ModelSlot.objects.bulk_create([
        ModelSlot(device=device, ai_model=old.ai_model, running_version=old, reported_version=old.version, version=old,
                  rollback=True, sequence=12) for device in Device.objects.all()])
    for n, (strategy, config, version_b) in enumerate(plans):
        distribution = distribution_create(version=new, version_b=version_b, strategy=strategy, config=config,
                                           target={"regions": [f"eu-central-frankfurt-{n}"]},
                                           name=f"{strategy} of the quantized model to the north gate cameras",
                                           now=now)
        distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    return old, new


def table_fit(page) -> dict:
    """How the changelist's table sits in the window: overflow hidden in its box, the last column's place."""
    return page.evaluate("""() => {
        const box = document.querySelector('#changelist-form .results');
        const last = [...document.querySelectorAll('#result_list thead th')].pop().getBoundingClientRect();
        const seen = document.elementFromPoint(last.left + last.width / 2, last.top + last.height / 2);
        return {hidden: box.scrollWidth - box.clientWidth, last_right: last.right,
                window: document.documentElement.clientWidth, page_scroll: document.documentElement.scrollWidth,
                last_seen: seen !== null && seen.closest('#result_list thead th:last-child') !== null};
    }""")


@pytest.mark.parametrize(("path", "actions"), [("/admin/devices/device/", 1), ("/admin/rollouts/distribution/", 0)])
def test_it_shows_the_whole_table_with_its_last_column_in_a_1400_px_window(console, busy_fleet, path, actions):
    page = console("Operator", path)

    fit = table_fit(page)

    assert fit["hidden"] <= 0, f"{fit['hidden']} px of the table are hidden on the right: {fit}"
    assert fit["last_right"] <= fit["window"] and fit["last_seen"], fit
    assert fit["page_scroll"] <= fit["window"], fit
    expect(page.locator("#changelist-form select[name=action]:visible")).to_have_count(actions)


def test_it_keeps_each_model_id_on_one_line_in_the_versions_list(console, busy_fleet):
    page = console("ModelDeveloper", "/admin/models_app/modelversion/")
    page.click("#toggle-nav-sidebar")  # the narrowest the table gets: the model sidebar opened
    expect(page.locator("#nav-sidebar")).to_be_visible()

    lines = page.eval_on_selector_all("#result_list td.field-model_id, #result_list th.field-model_id",
                                      "cells => cells.map(c => c.querySelector('a') ? "
                                      "c.querySelector('a').getClientRects().length : c.getClientRects().length)")

    assert lines == [1, 1, 1], lines  # a wrapped link is one box per line


def captions(page) -> list[str]:
    return [text.strip().lower() for text in page.locator("#content-main caption").all_inner_texts()]


def test_it_folds_the_schedulers_tables_away_at_the_end_of_an_admins_index(console):
    page = console("Admin", "/admin/")

    expect(page.get_by_role("link", name="Periodic tasks", exact=True)).to_be_hidden()
    page.locator("#scheduler-internals > summary").click()
    expect(page.get_by_role("link", name="Periodic tasks", exact=True)).to_be_visible()
    assert captions(page)[-1] == "periodic tasks", captions(page)
    assert captions(page)[:2] == ["dashboard", "accounts and access"], captions(page)


def test_it_shows_no_scheduler_tables_to_an_operator(console):
    page = console("Operator", "/admin/")

    assert captions(page) == ["dashboard", "devices", "model registry", "rollouts"]
    assert page.locator("#scheduler-internals").count() == 0
    expect(page.locator("#content-main")).not_to_contain_text("Periodic tasks")
