"""GET /api/v1/distributions (filters, pagination), /distributions/{id} and its audit trail /transitions."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hotswap.accounts.roles import Role
from models_app.models import ModelVersion
from rollouts.models import Distribution
from tests.rollouts.apis.conftest import act, create
from tests.test_error_format import assert_error_shape


@pytest.fixture
def three(operator, make_fleet, make_version):
    """Three distributions: resnet canary (paused), resnet direct, yolo direct; newest last."""
    make_version(version="1.1.0")
    make_version(name="yolo", version="2.0.0")
    make_fleet({"eu": 20})
    make_fleet({"us": 3})
    make_fleet({"ap": 3})
    canary = create(operator, version="resnet-1.1.0", strategy="canary", target={"regions": ["eu"]})
    direct = create(operator, version="resnet-1.1.0", target={"regions": ["us"]})
    yolo = create(operator, version="yolo-2.0.0", target={"regions": ["ap"]})
    act(operator, canary["id"], "abort")
    return {"canary": canary["id"], "direct": direct["id"], "yolo": yolo["id"]}


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def test_it_lists_distributions_newest_first(client_for, three):
    response = client_for(Role.VIEWER).get("/api/v1/distributions")

    assert ids(response) == [three["yolo"], three["direct"], three["canary"]]
    first = response.json()["results"][0]
    assert (first["model"], first["version"], first["strategy"], first["status"]) == (
        "yolo", "yolo-2.0.0", "direct", "scheduled")
    assert first["device_count"] == 3 and "stages" not in first
    assert response.json()["count"] == 3


@pytest.mark.parametrize(("query", "expected"), [
    ("status=aborted", ["canary"]),
    ("status=scheduled", ["yolo", "direct"]),
    ("strategy=canary", ["canary"]),
    ("strategy=direct&model=resnet", ["direct"]),
    ("model=yolo", ["yolo"]),
    ("model=bert", []),
])
def test_it_filters_by_status_strategy_and_model(client_for, three, query, expected):
    response = client_for(Role.VIEWER).get(f"/api/v1/distributions?{query}")

    assert ids(response) == [three[name] for name in expected]


@pytest.mark.parametrize(("query", "field"), [("status=sleeping", "status"), ("strategy=yolo", "strategy")])
def test_it_refuses_unknown_filter_values(client_for, query, field):
    error = assert_error_shape(client_for(Role.VIEWER).get(f"/api/v1/distributions?{query}"), 400,
                               "VALIDATION_ERROR")

    assert error["details"][0]["field"] == field


def test_the_list_costs_the_same_queries_for_one_row_or_many(operator, make_fleet, make_version):
    make_version(version="1.1.0")
    make_version(version="1.2.0")
    make_fleet({"eu": 1, "us": 1, "ap": 2})
    create(operator, version="resnet-1.1.0", target={"regions": ["eu"]})
    with CaptureQueriesContext(connection) as one:
        assert operator.get("/api/v1/distributions").status_code == 200
    create(operator, version="resnet-1.2.0", target={"regions": ["us"]})
    ab_test = create(operator, version="resnet-1.1.0", version_b="resnet-1.2.0", target={"regions": ["ap"]})
    Distribution.objects.filter(pk=ab_test["id"]).update(winner=ModelVersion.objects.get(model_id="resnet-1.2.0"))

    with CaptureQueriesContext(connection) as three:
        results = operator.get("/api/v1/distributions").json()["results"]

    assert (results[0]["version_b"], results[0]["winner"]) == ("resnet-1.2.0", "resnet-1.2.0")
    assert len(three) == len(one)


def test_it_paginates(client_for, three):
    client = client_for(Role.VIEWER)

    page = client.get("/api/v1/distributions?page_size=2").json()
    rest = client.get(page["next"]).json()

    assert [d["id"] for d in page["results"] + rest["results"]] == [three["yolo"], three["direct"], three["canary"]]
    assert rest["next"] is None


def test_it_shows_one_distribution_with_its_stages(client_for, three):
    body = client_for(Role.MODEL_DEVELOPER).get(f"/api/v1/distributions/{three['canary']}").json()

    assert body["id"] == three["canary"] and body["status"] == "aborted"
    assert body["status_reason"] == "aborted by an operator" and body["finished_at"]
    assert [(s["name"], s["status"], s["device_count"]) for s in body["stages"]] == [
        ("Canary 10 %", "cancelled", 2), ("Everyone else", "cancelled", 18)]


def test_it_answers_404_for_an_unknown_distribution(client_for):
    client = client_for(Role.VIEWER)

    for path in ("/api/v1/distributions/999999", "/api/v1/distributions/999999/transitions"):
        error = assert_error_shape(client.get(path), 404, "DISTRIBUTION_NOT_FOUND")
        assert "999999" in error["message"]


def test_the_audit_trail_says_who_did_what_and_why(operator, client_for, three):
    act(operator, three["direct"], "pause")  # a scheduled distribution cannot be paused: not recorded
    act(operator, three["direct"], "abort", {"reason": "wrong target"})

    response = client_for(Role.VIEWER).get(f"/api/v1/distributions/{three['direct']}/transitions")

    assert response.status_code == 200
    trail = [(t["stage"], t["from_status"], t["to_status"], t["actor"], t["reason"])
             for t in response.json()["results"]]
    assert trail[0][:4] == (None, "", "scheduled", "olga") and "direct" in trail[0][4]
    assert trail[1:] == [(None, "scheduled", "aborted", "olga", "wrong target"),
                         (0, "pending", "cancelled", "olga", "wrong target")]
    assert response.json()["results"][2]["stage_name"] == "All devices"
