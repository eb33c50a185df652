"""runstack's admin account: HOTSWAP_ADMIN_PASSWORD is applied when it changes, not re-hashed at every start."""

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from hotswap.management.commands.runstack import Command

pytestmark = pytest.mark.django_db


def test_it_keeps_the_admins_jwts_across_restarts_and_ends_them_when_the_password_changes(monkeypatch):
    monkeypatch.setenv("HOTSWAP_ADMIN_PASSWORD", "Restart-Passw0rd-1")
    Command().ensure_admin()
    client = APIClient()
    access = client.post("/api/v1/auth/token", {"username": "admin", "password": "Restart-Passw0rd-1"}).json()["access"]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")

    Command().ensure_admin()  # a restart with the same password
    assert client.get("/api/v1/auth/me").status_code == 200

    monkeypatch.setenv("HOTSWAP_ADMIN_PASSWORD", "Restart-Passw0rd-2")
    Command().ensure_admin()
    assert client.get("/api/v1/auth/me").status_code == 401
    assert get_user_model().objects.get(username="admin").check_password("Restart-Passw0rd-2")
