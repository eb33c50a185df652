"""The OpenAPI document is complete and warning-free, and Swagger UI works offline."""

import re

import pytest
from django.core.management import call_command


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
