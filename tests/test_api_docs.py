"""The OpenAPI document is complete and warning-free, and Swagger UI works offline."""

import re

import pytest
from django.core.management import call_command

from tests.devices.conftest import make_version  # noqa: F401 - fixture


def test_it_generates_a_valid_schema_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))

    schema = target.read_text()
    for operation in ("/api/v1/models:", "/api/v1/models/{model_id}/download:", "/api/v1/tokens:"):
        assert operation in schema


@pytest.mark.django_db
def test_it_serves_swagger_ui_with_local_assets(client):
    page = client.get("/api/docs/")

    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.content.decode())
    assert assets, "Swagger UI should load its JavaScript and CSS from our own static files"
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset


@pytest.mark.django_db
def test_it_serves_an_api_root_that_links_the_schema_docs_and_collections(client_for):
    client = client_for()  # the links are followed as a person with a token would
    root = client.get("/api/v1/")

    assert root.status_code == 200
    links = root.json()["links"]
    assert links["schema"] == "http://testserver/api/schema/"
    assert links["docs"] == "http://testserver/api/docs/"
    for name in ("models", "devices", "distributions", "enrollment_keys", "tokens"):
        answer = client.get(links[name].removeprefix("http://testserver"))
        assert answer.status_code == 200, name
        assert "results" in answer.json(), name
    assert client.get(links["schema"].removeprefix("http://testserver")).status_code == 200


@pytest.mark.django_db
def test_it_opens_the_api_root_to_anyone_and_documents_it(api_client):
    assert api_client.get("/api/v1/").status_code == 200

    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    root = schema["paths"]["/api/v1/"]["get"]
    assert set(schema["components"]["schemas"]["ApiRootApiOutput"]["properties"]) == {"name", "version", "links"}
    assert "200" in root["responses"]


@pytest.fixture(scope="module")
def openapi():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def _operations(schema):
    return [(f"{method.upper()} {path}", operation) for path, item in schema["paths"].items()
            for method, operation in item.items()]


def test_it_documents_the_errors_every_operation_can_answer(openapi):
    error = {"$ref": "#/components/schemas/Error"}
    for name, operation in _operations(openapi):
        responses = operation["responses"]
        secured = operation.get("security") and {} not in operation["security"]
        if secured:
            assert "401" in responses, name
        if secured and name != "GET /api/v1/auth/me":  # every role may ask who it is
            assert "403" in responses, name
        if "{" in name or any(p["name"] == "page" for p in operation.get("parameters", [])):
            assert "404" in responses, name
        if "requestBody" in operation:
            assert "400" in responses, name
        for code, response in responses.items():
            if code >= "400":
                assert response["content"]["application/json"]["schema"] == error, (name, code)


def test_it_says_which_request_bodies_refuse_unknown_fields(openapi):
    schemas = openapi["components"]["schemas"]

    for strict in ("DeviceCreateRequest", "DeviceUpdateRequest", "CapabilitiesInputRequest",
                   "DistributionCreateApiInputRequest", "ReasonInputRequest"):
        assert schemas[strict]["additionalProperties"] is False, strict
    assert "additionalProperties" not in schemas["DeviceDetailOutput"]


def test_it_marks_every_field_that_can_be_null_as_nullable(openapi):
    schemas = openapi["components"]["schemas"]

    for component, field in [("ModelVersionOutput", "approved_by"), ("DistributionOutput", "winner"),
                             ("DistributionOutput", "version_b"), ("TransitionOutput", "stage"),
                             ("TransitionOutput", "stage_name"), ("ValidationReportOutput", "test_set"),
                             ("ValidationReportOutput", "baseline_model_id")]:
        assert schemas[component]["properties"][field].get("nullable") is True, (component, field)


def test_it_documents_paginated_lists_as_pages(openapi):
    for path in ("/api/v1/models", "/api/v1/models/{name}/versions", "/api/v1/models/{name}/test-sets"):
        operation = openapi["paths"][path]["get"]
        page = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert {"count", "next", "previous", "results"} <= set(openapi["components"]["schemas"][page]["properties"])
        assert {"page", "page_size"} <= {p["name"] for p in operation["parameters"]}, path
    report = openapi["paths"]["/api/v1/models/{model_id}/validation-report"]["get"]["responses"]["200"]
    assert report["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationReportOrPage")


@pytest.mark.django_db
def test_it_answers_options_with_every_method_of_the_path(client_for):
    client = client_for()

    for path, methods in [("/api/v1/tokens", {"GET", "POST"}), ("/api/v1/devices/dev-1", {"GET", "PUT", "DELETE"}),
                          ("/api/v1/models/m-1.0.0", {"GET", "DELETE"})]:
        allow = {method.strip() for method in client.options(path)["Allow"].split(",")}
        assert methods <= allow, path
        assert allow - methods <= {"HEAD", "OPTIONS"}, path


@pytest.mark.django_db
@pytest.mark.parametrize("page_size", ["null", "0", "-3", "1.5"])
def test_it_refuses_a_page_size_that_is_not_a_positive_integer(client_for, page_size):
    response = client_for().get(f"/api/v1/tokens?page_size={page_size}")

    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "page_size"


@pytest.mark.django_db
def test_it_reads_an_empty_filter_as_no_filter(client_for):
    client = client_for()

    for path in ("/api/v1/models?status=&framework=&ordering=", "/api/v1/tokens?username=&active=",
                 "/api/v1/distributions?status=&strategy=", "/api/v1/devices?status=&online=&page_size="):
        response = client.get(path)
        assert response.status_code == 200, (path, response.content)


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["redirect=-58800", "redirect=maybe"])
def test_it_refuses_a_boolean_parameter_that_is_neither_true_nor_false(client_for, make_version, query):  # noqa: F811
    make_version(name="resnet", version="1.0.0")

    response = client_for().get(f"/api/v1/models/resnet-1.0.0/download?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == [{"field": "redirect", "message": "Must be true or false."}]
