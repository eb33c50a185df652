"""The rollout console in real Chromium: create a distribution, watch it move, click every button and confirm."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import ModelSlot
from rollouts.models import Distribution, Stage
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create
from tests.browser import PASSWORD, WAIT_MS, chromium, console_page, expect, server  # noqa: F401 - fixtures
from tests.rollouts.conftest import offered, report_installs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(chromium, server, make_user, request):  # noqa: F811 - fixtures from tests.browser
    """A logged-in Admin's page; a screenshot of where it ended is kept under var/test-artifacts/."""
    user = make_user("Admin", is_staff=True, password=PASSWORD)
    with console_page(chromium, server, user, start="/admin/rollouts/distribution/",
                      artifact=f"rollouts-console-{request.node.name}") as page:
        yield page


def click_and_confirm(page, action: str, *, reason: str = "", winner: str = "") -> None:
    """Clicks the button, checks the confirmation page asks, then confirms."""
    page.click(f"#action-{action}")
    page.wait_for_url(f"**/actions/{action}/")
    expect(page.locator(".question")).to_contain_text("?")
    if reason:
        page.fill("#id_reason", reason)
    if winner:
        page.get_by_label(winner).check()
    page.click("#confirm")
    page.wait_for_url(re.compile(r".*/change/$"))


def enabled_buttons(page) -> set[str]:
    return {name for name in ("approve", "pause", "resume", "abort", "rollback")
            if page.locator(f"#action-{name}").is_enabled()}


def gated(version, *, strategy: str, config: dict, version_b=None) -> Distribution:
    """A distribution whose first stage waits at its gate (installs done, soak over)."""
    now = timezone.now()
    distribution = distribution_create(version=version, version_b=version_b, strategy=strategy, config=config,
                                       name=f"{strategy} in the browser", now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0), now=now)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    assert distribution.stages.get(index=0).status == Stage.Status.AWAITING_APPROVAL
    return distribution


def test_create_a_progressive_distribution_and_watch_its_bars_move(page, make_fleet, make_version):
    old = make_version(version="1.0.0")
    make_version(version="1.1.0")
    make_fleet({"eu": 10, "us": 5}, running=old)

    page.click(".object-tools a.addlink")
    page.select_option("#id_version", label="resnet-1.1.0")
    page.select_option("#id_strategy", "regional")
    expect(page.locator(".field-percent")).to_be_hidden()
    expect(page.locator(".field-regions")).to_be_visible()
    page.fill("#id_regions", "mars")
    page.click("#create")
    # The service's refusal shows next to the field, and what was typed stays.
    expect(page.locator(".field-regions .errorlist")).to_contain_text("No targeted device is in mars")
    expect(page.locator("#id_strategy")).to_have_value("regional")

    page.select_option("#id_strategy", "progressive")
    expect(page.locator(".field-regions")).to_be_hidden()
    page.fill("#id_name", "progressive from the console")
    page.fill("#id_stages", "20 PT0S manual\n100 PT0S")
    page.fill("#id_target_regions", "eu")
    criterion = page.locator(".field-max_latency_increase")
    expect(criterion).to_be_visible()  # whatever the strategy
    expect(criterion.locator(".help")).to_contain_text("Empty: the default, 20 %.")
    page.fill("#id_max_latency_increase", "15")
    page.click("#create")
    page.wait_for_url(re.compile(r".*/change/$"))
    expect(page.locator(".messagelist")).to_contain_text("10 device(s) in 2 stage(s)")

    distribution = Distribution.objects.get(name="progressive from the console")
    assert distribution.target == {"regions": ["eu"]} and len(distribution.config["stages"]) == 2
    criteria = page.locator("details", has=page.locator("summary", has_text="success criteria"))
    criteria.locator("summary").click()
    expect(criteria.locator("pre")).to_be_visible()
    expect(criteria.locator("pre")).to_contain_text('"max_latency_increase": 15,')
    expect(criteria.locator("pre")).to_contain_text('"min_devices": 3,')  # the default
    expect(page.locator('[data-summary="stage-0"]')).to_have_text("2 pending of 2")

    # The orchestrator starts the stage: the state machine moved, so the page reloads itself.
    distribution_advance(distribution_id=distribution.pk)
    expect(page.locator('[data-stage-status="0"]')).to_have_text("Installing", timeout=WAIT_MS)
    expect(page.locator('[data-summary="stage-0"]')).to_have_text("2 installing of 2")
    page.evaluate("window.stayedOnThePage = true")

    # One device installs: only the bars move, in place.
    report_installs(offered(distribution, 0)[:1])
    distribution_advance(distribution_id=distribution.pk)
    expect(page.locator('[data-summary="stage-0"]')).to_have_text("1 active · 1 installing of 2", timeout=WAIT_MS)
    expect(page.locator('[data-summary="total"]')).to_have_text("1 active · 1 installing · 8 pending of 10")
    assert page.evaluate("window.stayedOnThePage") is True
    width = page.locator('[data-bar="stage-0"] [data-part="active"]').evaluate("e => e.style.width")
    assert width == "50%"


def test_approve_pause_resume_and_roll_back_with_the_buttons(page, make_fleet, make_version):
    old, new = make_version(version="1.0.0"), make_version(version="1.1.0")
    make_fleet({"eu": 10}, running=old)
    distribution = gated(new, strategy="progressive",
                         config={"stages": [{"percent": 20, "soak": "PT0S", "gate": "manual"}, {"percent": 100}],
                                 "soak": "PT0S"})
    page.goto(f"/admin/rollouts/distribution/{distribution.pk}/change/")
    expect(page.locator("#current-gate")).to_contain_text("awaiting approval, manual gate")
    assert enabled_buttons(page) == {"approve", "pause", "abort", "rollback"}

    click_and_confirm(page, "approve")
    expect(page.locator(".messagelist")).to_contain_text("Approved Stage 1: 20 %")
    assert distribution.stages.get(index=0).status == Stage.Status.PASSED

    distribution_advance(distribution_id=distribution.pk)  # the next stage starts: the page follows
    expect(page.locator("#current-gate")).to_contain_text("2. Stage 2: 100 %: installing", timeout=WAIT_MS)

    click_and_confirm(page, "pause", reason="dashboards look odd")
    distribution.refresh_from_db()
    assert (distribution.status, distribution.status_reason) == ("paused", "dashboards look odd")
    expect(page.locator("#status")).to_have_text("Paused")
    assert enabled_buttons(page) == {"resume", "abort", "rollback"}

    click_and_confirm(page, "resume")
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.RUNNING
    expect(page.locator("#status")).to_have_text("Running")

    # The devices of both stages run the new version by now (as their check-ins would report).
    ModelSlot.objects.update(running_version=new)
    click_and_confirm(page, "rollback", reason="latency regression")
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.ROLLED_BACK
    assert ModelSlot.objects.filter(version=old, rollback=True).count() == 10
    expect(page.locator(".messagelist")).to_contain_text("Rolled back: 10 device(s)")
    expect(page.locator('[data-summary="rollback"]')).to_have_text(
        "0 of 10 device(s) back on their previous version")
    assert enabled_buttons(page) == set()

    ModelSlot.objects.update(running_version=old)  # they converge back
    expect(page.locator('[data-summary="rollback"]')).to_have_text(
        "10 of 10 device(s) back on their previous version", timeout=WAIT_MS)
    expect(page.locator("#transitions")).to_contain_text("latency regression")


def test_approve_an_ab_test_with_its_winner_then_abort(page, make_fleet, make_version):
    a, b = make_version(version="2.0.0"), make_version(version="2.1.0")
    make_fleet({"eu": 10})
    distribution = gated(a, version_b=b, strategy="ab_test", config={"split": 50, "window": "PT0S"})
    page.goto(f"/admin/rollouts/distribution/{distribution.pk}/change/")
    expect(page.locator("#waiting-for")).to_contain_text("name the A/B winner")

    page.click("#action-approve")
    page.click("#confirm")  # no winner chosen: the browser asks for one and sends nothing
    assert page.locator("#id_winner_0").evaluate("e => e.validationMessage")
    expect(page).to_have_url(re.compile(r".*/actions/approve/$"))
    assert distribution.stages.get(index=0).status == Stage.Status.AWAITING_APPROVAL
    page.get_by_label("resnet-2.1.0").check()
    page.click("#confirm")
    page.wait_for_url(re.compile(r".*/change/$"))
    expect(page.locator("#winner")).to_have_text("resnet-2.1.0")
    distribution.refresh_from_db()
    assert distribution.winner == b

    page.click("#action-abort")  # asked, then declined: nothing changes
    page.click("#cancel")
    page.wait_for_url(re.compile(r".*/change/$"))
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.RUNNING

    click_and_confirm(page, "abort", reason="wrong dataset")
    distribution.refresh_from_db()
    assert distribution.status == Distribution.Status.ABORTED
    expect(page.locator("#status")).to_have_text("Aborted")
    assert enabled_buttons(page) == {"rollback"}  # what the devices installed can still be undone
