"""The rollout console: list, distribution page, each operator's button with its confirmation, the create form."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from devices.models import ModelSlot
from rollouts.criteria import DEFAULT_CRITERIA
from rollouts.models import Distribution, Stage, Transition
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create
from tests.rollouts.conftest import offered, report_installs

pytestmark = pytest.mark.django_db
URL = "/admin/rollouts/distribution/"


@pytest.fixture
def console(make_user):
    client = Client()
    client.force_login(make_user("Admin", is_staff=True))
    return client


@pytest.fixture
def versions(make_version):
    return make_version(version="1.0.0"), make_version(version="1.1.0")


@pytest.fixture
def canary(make_fleet, versions):
    """A running canary over 50 devices: 3 of its 5 canary devices installed, 2 still installing."""
    old, new = versions
    make_fleet({"eu": 30, "us": 20}, running=old)
    distribution = distribution_create(version=new, strategy="canary", config={"percent": 10, "soak": "PT10M"},
                                       name="resnet canary")
    distribution_advance(distribution_id=distribution.pk)
    report_installs(offered(distribution, 0)[:3])
    distribution_advance(distribution_id=distribution.pk)
    distribution.refresh_from_db()
    return distribution


def gated(version, *, strategy="canary", config=None, version_b=None) -> Distribution:
    """A distribution whose first stage waits at its gate: installs done, the soak (PT0S) over."""
    config = config or {"percent": 20, "soak": "PT0S", "gate": "manual"}
    now = timezone.now()
    distribution = distribution_create(version=version, version_b=version_b, strategy=strategy, config=config,
                                       now=now)
    distribution_advance(distribution_id=distribution.pk, now=now)
    report_installs(offered(distribution, 0), now=now)
    distribution_advance(distribution_id=distribution.pk, now=now + timedelta(seconds=1))
    distribution.refresh_from_db()
    assert distribution.stages.get(index=0).status == Stage.Status.AWAITING_APPROVAL
    return distribution


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def buttons(page: str) -> dict[str, bool]:
    """{action: enabled} of the distribution page's buttons."""
    found = re.findall(r'<(a|button type="button") id="action-(\w+)"([^>]*)>', page)
    return {name: "disabled" not in attributes for _tag, name, attributes in found}


def confirm(console, distribution, action: str, **data):
    url = f"{URL}{distribution.pk}/actions/{action}/"
    question = console.get(url)
    assert question.status_code == 200 and 'id="confirm"' in question.content.decode()
    return console.post(url, data, follow=True)


def test_it_lists_distributions_with_status_and_progress(console, canary):
    page = console.get(URL).content.decode()

    assert "resnet canary" in page and "resnet-1.1.0" in page
    assert 'class="rollout-status running"' in page
    assert "3 active · 2 installing · 45 pending of 50" in page
    assert "1. Canary 10 %: installing" in page


def test_the_list_costs_the_same_queries_for_one_row_or_many(console, make_fleet, versions,
                                                           django_assert_max_num_queries):
    new = versions[1]
    make_fleet({"eu": 2})
    distribution_create(version=new, strategy="direct")
    with django_assert_max_num_queries(30) as one:
        console.get(URL)
    Distribution.objects.filter(status="scheduled").update(status="completed")
    for region in ("us", "ap", "sa", "af"):
        make_fleet({region: 2})
        distribution_create(version=new, strategy="direct", target={"regions": [region]})
        Distribution.objects.filter(status="scheduled").update(status="completed")
    with django_assert_max_num_queries(len(one.captured_queries)):
        page = console.get(URL).content.decode()
    assert page.count('class="rollout-status completed"') == 5


def test_the_page_shows_stages_gate_waiting_for_history_and_allowed_buttons(console, canary):
    page = console.get(f"{URL}{canary.pk}/change/").content.decode()

    assert "Canary 10 %" in page and "Everyone else" in page
    assert "installs on 2 device(s) of Canary 10 %" in page
    assert "1. Canary 10 %: installing, automatic gate" in page
    assert 'data-summary="stage-0">3 active · 2 installing of 5' in page
    assert "offered to 5 device(s)" in page and "created: canary" in page  # the transition history
    assert buttons(page) == {"approve": False, "pause": True, "resume": False, "abort": True, "rollback": True}
    assert 'data-poll="true"' in page


def test_the_status_endpoint_gives_the_progress_the_page_polls(console, canary):
    data = console.get(f"{URL}{canary.pk}/status.json").json()

    assert data["status"] == "running" and data["polling"] is True
    assert data["signature"] == f"running:{canary.transitions.count()}"
    assert data["stages"][0]["bar"]["summary"] == "3 active · 2 installing of 5"
    parts = {part["kind"]: part for part in data["total"]["parts"]}
    assert (parts["active"]["count"], parts["active"]["percent"]) == (3, 6.0)
    assert data["waiting_for"].startswith("installs on 2 device(s)")


def test_pause_asks_then_pauses_with_the_reason_in_the_history(console, canary):
    response = confirm(console, canary, "pause", reason="checking dashboards")

    canary.refresh_from_db()
    assert canary.status == Distribution.Status.PAUSED
    transition = Transition.objects.filter(distribution=canary, stage=None).last()
    assert (transition.to_status, transition.reason, transition.actor_label) == (
        "paused", "checking dashboards", transition.actor.username)
    assert any(m.startswith("Paused") for m in messages_of(response))
    assert buttons(response.content.decode()) == {"approve": False, "pause": False, "resume": True, "abort": True,
                                                  "rollback": True}


def test_nothing_happens_until_the_confirmation_is_posted(console, canary):
    page = console.get(f"{URL}{canary.pk}/actions/abort/").content.decode()

    assert "Abort the distribution for good?" in page and "No, take me back" in page
    canary.refresh_from_db()
    assert canary.status == Distribution.Status.RUNNING


def test_resume_continues_a_paused_distribution(console, canary):
    confirm(console, canary, "pause")
    response = confirm(console, canary, "resume")

    canary.refresh_from_db()
    assert canary.status == Distribution.Status.RUNNING
    assert "Resumed." in messages_of(response)


def test_an_operators_own_pause_and_resume_leave_the_health_checks_on(console, canary):
    confirm(console, canary, "pause", reason="night freeze")
    confirm(console, canary, "resume")

    assert "override" not in canary.stages.get(index=0).evidence


def test_abort_stops_for_good(console, canary):
    response = confirm(console, canary, "abort", reason="wrong model")

    canary.refresh_from_db()
    assert (canary.status, canary.status_reason) == (Distribution.Status.ABORTED, "wrong model")
    assert set(canary.stages.values_list("status", flat=True)) == {Stage.Status.CANCELLED}
    assert buttons(response.content.decode()) == {"approve": False, "pause": False, "resume": False, "abort": False,
                                                  "rollback": True}


def test_rollback_returns_the_touched_devices_to_their_previous_version(console, canary, versions):
    old, new = versions
    # The three canary devices that installed run the new version (as their heartbeats would say).
    ModelSlot.objects.filter(device__assignments__distribution=canary, device__assignments__state="active").update(
        running_version=new)
    question = console.get(f"{URL}{canary.pk}/actions/rollback/").content.decode()
    assert "5 devices touched by this distribution go back to the version they ran before" in question

    response = confirm(console, canary, "rollback", reason="latency")

    canary.refresh_from_db()
    assert canary.status == Distribution.Status.ROLLED_BACK
    assert not ModelSlot.objects.filter(version=new).exists()
    assert ModelSlot.objects.filter(version=old, rollback=True).count() == 5
    assert "Rolled back: 5 device(s) go back to their previous version." in messages_of(response)
    page = response.content.decode()
    assert "2 of 5 device(s) back on their previous version" in page  # three must still check in
    assert all(not enabled for enabled in buttons(page).values())


def test_approve_opens_a_manual_gate(console, make_fleet, versions):
    old, new = versions
    make_fleet({"eu": 10}, running=old)
    distribution = gated(new)
    page = console.get(f"{URL}{distribution.pk}/change/").content.decode()
    assert buttons(page)["approve"] and "an operator&#x27;s approval of Canary 20 %" in page

    response = confirm(console, distribution, "approve")

    stage = distribution.stages.get(index=0)
    assert stage.status == Stage.Status.PASSED and stage.approved_by is not None
    assert "Approved Canary 20 %; the next stage starts." in messages_of(response)


def test_approving_an_ab_test_asks_which_version_wins(console, make_fleet, make_version):
    a, b = make_version(version="2.0.0"), make_version(version="2.1.0")
    make_fleet({"eu": 10})
    distribution = gated(a, version_b=b, strategy="ab_test", config={"split": 50, "window": "PT0S"})
    url = f"{URL}{distribution.pk}/actions/approve/"
    page = console.get(url).content.decode()
    assert 'type="radio" name="winner"' in page and "resnet-2.0.0" in page and "resnet-2.1.0" in page

    refused = console.post(url, {})
    assert refused.status_code == 200 and "This field is required." in refused.content.decode()
    assert distribution.stages.get(index=0).status == Stage.Status.AWAITING_APPROVAL

    response = console.post(url, {"winner": b.pk}, follow=True)

    distribution.refresh_from_db()
    assert distribution.winner == b
    assert distribution.stages.get(index=0).status == Stage.Status.PASSED
    assert "Approved A/B test 50 / 50: resnet-2.1.0 wins." in messages_of(response)


def test_an_action_the_state_does_not_allow_is_refused_with_a_message(console, canary):
    response = console.post(f"{URL}{canary.pk}/actions/resume/", follow=True)
    approve = console.get(f"{URL}{canary.pk}/actions/approve/", follow=True)

    assert response.status_code == 200
    assert "Only a paused distribution can be resumed." in messages_of(response)
    assert "Nothing waits for approval." in messages_of(approve)
    canary.refresh_from_db()
    assert canary.status == Distribution.Status.RUNNING


def test_a_service_refusal_becomes_a_message(console, canary, monkeypatch):
    from rollouts import admin as rollout_admin
    from rollouts.transitions import TransitionRefused

    def lost_race(**kwargs):
        raise TransitionRefused("The distribution changed in the meantime; reload and try again.")

    monkeypatch.setattr(rollout_admin, "distribution_pause", lost_race)
    response = console.post(f"{URL}{canary.pk}/actions/pause/", follow=True)

    assert response.status_code == 200
    assert "The distribution changed in the meantime; reload and try again." in messages_of(response)


def test_a_viewer_sees_everything_and_can_do_nothing(make_user, canary):
    viewer = Client()
    viewer.force_login(make_user("Viewer", is_staff=True))

    page = viewer.get(f"{URL}{canary.pk}/change/").content.decode()
    assert "Canary 10 %" in page and "Your role may not do this." in page
    assert not any(buttons(page).values())
    assert viewer.get(URL).status_code == 200
    assert viewer.get(f"{URL}{canary.pk}/status.json").status_code == 200
    assert viewer.post(f"{URL}{canary.pk}/actions/pause/").status_code == 403
    assert viewer.get(f"{URL}add/").status_code == 403
    canary.refresh_from_db()
    assert canary.status == Distribution.Status.RUNNING


def test_an_operator_acts_and_rollback_needs_its_own_permission(make_user, canary):
    operator = Client()
    operator.force_login(make_user("Operator", is_staff=True))
    assert buttons(operator.get(f"{URL}{canary.pk}/change/").content.decode())["rollback"]

    limited = make_user(None, is_staff=True)
    limited.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="rollouts", codename__in=["view_distribution", "change_distribution"]))
    client = Client()
    client.force_login(limited)
    page = client.get(f"{URL}{canary.pk}/change/").content.decode()
    assert buttons(page) == {"approve": False, "pause": True, "resume": False, "abort": True, "rollback": False}
    assert client.post(f"{URL}{canary.pk}/actions/rollback/").status_code == 403

    operator.post(f"{URL}{canary.pk}/actions/pause/")
    canary.refresh_from_db()
    assert canary.status == Distribution.Status.PAUSED


def test_the_create_form_offers_only_distributable_versions(console, make_version, versions):
    make_version(version="0.9.0", status="failed")
    make_version(version="0.8.0", status="deprecated")
    make_version(version="0.7.0", status="failed", approved_at=timezone.now())

    page = console.get(f"{URL}add/").content.decode()

    assert "resnet-1.1.0" in page and "resnet-0.7.0 (approved by an Admin)" in page
    assert "resnet-0.9.0" not in page and "resnet-0.8.0" not in page
    assert 'data-strategies="direct canary progressive regional"' in page  # the page hides the others


def form(version, **fields) -> dict:
    return {"version": version.pk, "strategy": "", "rollback_policy": "automatic", **fields}


def test_it_creates_a_progressive_distribution_with_its_stages_target_and_schedule(console, make_fleet, versions):
    old, new = versions
    make_fleet({"eu": 30}, running=old, tags=["lab"])
    make_fleet({"us": 10}, running=old)

    response = console.post(f"{URL}add/", form(
        new, name="lab rollout", strategy="progressive", stages="20 PT5M manual\n50\n100 PT0S",
        soak="pt10m", gate="automatic", percent="30", target_regions="eu", target_tags="lab",
        target_min_memory_mb="1024", rollback_policy="manual", scheduled_at="2031-05-01T08:30",
    ), follow=True)

    distribution = Distribution.objects.get()
    assert response.redirect_chain[-1][0] == f"{URL}{distribution.pk}/change/"
    assert any("Progressive (chosen by the operator), 30 device(s) in 3 stage(s)" in m
               for m in messages_of(response))
    assert distribution.config == {"stages": [{"percent": 20.0, "soak": "PT5M", "gate": "manual"},
                                              {"percent": 50.0, "soak": "PT10M", "gate": "automatic"},
                                              {"percent": 100.0, "soak": "PT0S", "gate": "automatic"}]}
    assert distribution.target == {"regions": ["eu"], "tags": ["lab"], "min_memory_mb": 1024}
    assert (distribution.name, distribution.rollback_policy) == ("lab rollout", "manual")
    assert distribution.scheduled_at.isoformat() == "2031-05-01T08:30:00+00:00"
    assert distribution.created_by.username.endswith("admin")
    assert [s.device_count for s in distribution.stages.all()] == [6, 9, 15]


@pytest.mark.parametrize(("strategy", "fields", "config"), [
    ("direct", {"soak": "PT1M"}, {"soak": "PT1M"}),
    ("canary", {"percent": "5", "soak": "PT1H", "final_soak": "PT2M", "gate": "manual"},
     {"percent": 5.0, "soak": "PT1H", "final_soak": "PT2M", "gate": "manual"}),
    ("progressive", {"percentages": "25, 100", "soak": "PT0S"},
     {"stages": [{"percent": 25.0, "soak": "PT0S", "gate": "automatic"},
                 {"percent": 100.0, "soak": "PT0S", "gate": "automatic"}]}),
    ("regional", {"regions": "us, eu", "delay": "PT5M", "soak": "PT0S"},
     {"regions": ["us", "eu"], "delay": "PT5M", "soak": "PT0S", "gate": "automatic"}),
])
def test_each_strategy_takes_its_own_fields(console, make_fleet, versions, strategy, fields, config):
    make_fleet({"eu": 10, "us": 10})

    console.post(f"{URL}add/", form(versions[1], strategy=strategy, split="30", window="PT1M", **fields))

    distribution = Distribution.objects.get()
    assert (distribution.strategy, distribution.config) == (strategy, config)


def test_it_creates_an_ab_test_with_its_settings(console, make_fleet, versions):
    old, new = versions
    make_fleet({"eu": 10})

    console.post(f"{URL}add/", form(old, version_b=new.pk, strategy="ab_test", split="30", window="PT2H",
                                    metric="accuracy", min_improvement="2.5"))

    distribution = Distribution.objects.get()
    assert (distribution.version, distribution.version_b) == (old, new)
    assert distribution.config == {"split": 30.0, "window": "PT2H", "metric": "accuracy", "min_improvement": 2.5}


def test_the_success_criteria_are_optional_and_name_their_defaults(console, versions):
    page = html.unescape(console.get(f"{URL}add/").content.decode())

    assert "<h2>Success criteria and rollback</h2>" in page
    assert "Max latency increase (%)" in page and "in percent. Empty: the default, 20 %." in page
    assert "(0.05 = 5 %). Empty: the default, 0.05." in page
    assert "in milliseconds. Empty: the default, none." in page
    for name in DEFAULT_CRITERIA:
        field = re.search(rf'<input type="number" name="{name}"[^>]*>', page)
        assert field and "value=" not in field.group(), name  # empty: nothing is sent unless typed


def test_it_stores_the_criteria_filled_in_and_the_defaults_for_the_rest(console, make_fleet, versions):
    make_fleet({"eu": 10})

    response = console.post(f"{URL}add/", form(versions[1], strategy="direct", max_latency_increase="10",
                                               min_devices="5", rollback_policy="manual"), follow=True)

    distribution = Distribution.objects.get()
    assert distribution.success_criteria == {**DEFAULT_CRITERIA, "max_latency_increase": 10, "min_devices": 5}
    assert distribution.success_criteria["max_error_rate"] == 0.05  # a default, not something the form sent
    assert distribution.rollback_policy == "manual"
    page = html.unescape(response.content.decode())
    shown = re.search(r"<summary>success criteria</summary><pre>(.*?)</pre>", page, re.S).group(1)
    assert json.loads(shown) == distribution.success_criteria
    assert "Manual rollback" in page


def test_empty_criteria_store_the_services_defaults(console, make_fleet, versions):
    make_fleet({"eu": 10})

    console.post(f"{URL}add/", form(versions[1], strategy="direct", max_error_rate="", confidence=""))

    assert Distribution.objects.get().success_criteria == DEFAULT_CRITERIA


def test_automatic_chooses_by_fleet_size_and_ignores_other_strategies_settings(console, make_fleet, versions):
    make_fleet({"eu": 40})

    console.post(f"{URL}add/", form(versions[1], percent="50", regions="nowhere"))

    distribution = Distribution.objects.get()
    assert distribution.strategy == "canary" and distribution.config["percent"] == 10
    assert "10-100" in distribution.strategy_reason


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"strategy": "canary", "soak": "30 minutes"}, "soak", "Use an ISO 8601 duration such as PT30M"),
    ({"strategy": "canary", "percent": "100"}, "percent", "A canary is a part of the fleet"),
    ({"strategy": "progressive", "stages": "10\n5\n100"}, "stages", "Percentages must rise: 5 follows 10."),
    ({"strategy": "progressive", "percentages": "10, 50"}, "percentages", "The last stage must reach 100 %."),
    ({"strategy": "regional", "regions": "mars"}, "regions", "No targeted device is in mars"),
    ({"strategy": "canary", "version_b": "self"}, "version_b", "An A/B test needs two different versions."),
    ({"target_regions": "mars"}, None, "No device matches the target filter"),
    ({"strategy": "progressive", "stages": "ten percent"}, "stages", "is not a percent"),
    ({"strategy": "direct", "confidence": "2"}, "confidence", "A number from 0.5 to 0.9999."),
    ({"strategy": "direct", "max_error_rate": "5"}, "max_error_rate", "A number from 0 to 1."),
    ({"strategy": "direct", "min_devices": "0"}, "min_devices", "A number from 1 to 1000000."),
    ({"strategy": "direct", "min_inferences": "2.5"}, "min_inferences", "Enter a whole number."),
])
def test_refusals_show_on_the_form_not_as_an_error_page(console, make_fleet, versions, fields, field, message):
    make_fleet({"eu": 20})
    if fields.get("version_b") == "self":
        fields = {**fields, "version_b": versions[1].pk}

    response = console.post(f"{URL}add/", form(versions[1], **fields))

    assert response.status_code == 200
    errors = response.context["form"].errors
    where = errors.get(field or "__all__", [])
    assert any(message in error for error in where), errors
    assert not Distribution.objects.exists()


def test_a_conflict_with_a_running_distribution_is_explained(console, make_fleet, versions, canary):
    response = console.post(f"{URL}add/", form(versions[1], strategy="direct"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "Targeted devices already belong to an open distribution of resnet: resnet canary" in page
    assert Distribution.objects.count() == 1
