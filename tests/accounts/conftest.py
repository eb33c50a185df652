"""Fixtures for accounts tests: API tokens and clients that send real credentials."""

import pytest
from rest_framework.test import APIClient

from hotswap.accounts.services import api_token_create


@pytest.fixture
def make_token(make_user):
    """make_token(user=None, **kw) -> (ApiToken, raw key); a fresh Admin user when none is given."""

    def make(user=None, name: str = "ci", **kwargs):
        user = user or make_user()
        return api_token_create(user=user, name=name, created_by=None, **kwargs)

    return make


@pytest.fixture
def token_client():
    """An APIClient that sends `Authorization: <header>` on every request."""

    def make(key: str, keyword: str = "Token") -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"{keyword} {key}".strip())
        return client

    return make
