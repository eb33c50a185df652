"""Shared fixtures: users in roles, API clients, a clean cache per test."""

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from rest_framework.test import APIClient

from hotswap.accounts.roles import Role


@pytest.fixture(autouse=True)
def _clean_cache():
    # Throttle counters live in the cache; each test starts with none. Only this run's keys are
    # removed (FLUSHDB would wipe a parallel run's state on the shared Redis).
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=f"{settings.CACHES['default']['KEY_PREFIX']}:*", count=1000))
    if keys:
        client.delete(*keys)
    yield


@pytest.fixture
def make_user(db):
    counter = {"n": 0}

    def make(role: str | None = Role.ADMIN, **fields):
        counter["n"] += 1
        fields.setdefault("username", f"user{counter['n']}-{(role or 'none').lower()}")
        fields.setdefault("password", "s3cret-Passw0rd")
        user = get_user_model().objects.create_user(**fields)
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def client_for(make_user):
    """An APIClient authenticated as a fresh user in the given role."""

    def make(role: str | None = Role.ADMIN, **fields) -> APIClient:
        client = APIClient()
        client.force_authenticate(user=make_user(role, **fields))
        return client

    return make
