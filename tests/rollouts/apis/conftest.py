"""Fixtures for the distributions API: clients per role, and a way to create distributions through the API."""

from __future__ import annotations

import pytest
from django.test import override_settings

from hotswap.accounts.roles import Role


@pytest.fixture(autouse=True)
def _soak_judge():
    # These tests are about the API, not health verdicts: a stage passes when its soak is over.
    with override_settings(ROLLOUT_JUDGE="rollouts.judges.soak_judge"):
        yield


@pytest.fixture
def operator(client_for):
    return client_for(Role.OPERATOR, username="olga")


def create(client, **body):
    """POSTs a distribution; asserts 201 and returns its JSON."""
    response = client.post("/api/v1/distributions", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def act(client, distribution_id: int, action: str, body: dict | None = None):
    return client.post(f"/api/v1/distributions/{distribution_id}/{action}", body or {}, format="json")
