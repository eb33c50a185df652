"""jwt_expired_tokens_flush: the rotation blacklist forgets refresh tokens once they have expired."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from hotswap.accounts.services import jwt_expired_tokens_delete
from hotswap.accounts.tasks import jwt_expired_tokens_flush
from hotswap.celery import app

pytestmark = pytest.mark.django_db

LIFETIME = settings.SIMPLE_JWT["REFRESH_TOKEN_LIFETIME"]


def _login_and_refresh(make_user) -> str:
    """A login (one refresh token) and a refresh (its blacklisting, a second token): returns the live one."""
    client = APIClient()
    user = make_user()
    pair = client.post("/api/v1/auth/token", {"username": user.username, "password": "s3cret-Passw0rd"}).json()
    return client.post("/api/v1/auth/token/refresh", {"refresh": pair["refresh"]}).json()["refresh"]


def test_it_deletes_expired_tokens_with_their_blacklist_rows_and_keeps_live_ones(make_user):
    _login_and_refresh(make_user)
    assert (OutstandingToken.objects.count(), BlacklistedToken.objects.count()) == (2, 1)

    assert jwt_expired_tokens_delete(now=timezone.now() + LIFETIME - timedelta(minutes=1)) == 0
    assert OutstandingToken.objects.count() == 2
    assert jwt_expired_tokens_delete(now=timezone.now() + LIFETIME + timedelta(minutes=1)) == 2
    assert (OutstandingToken.objects.count(), BlacklistedToken.objects.count()) == (0, 0)


def test_it_runs_twice_with_the_same_result(make_user):
    live = _login_and_refresh(make_user)
    OutstandingToken.objects.exclude(token=live).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert jwt_expired_tokens_flush() == 1
    assert jwt_expired_tokens_flush() == 0
    assert list(OutstandingToken.objects.values_list("token", flat=True)) == [live]


def test_it_is_on_the_beat_schedule():
    app.loader.import_default_modules()
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}

    assert "hotswap.accounts.tasks.jwt_expired_tokens_flush" in tasks
    assert "hotswap.accounts.tasks.jwt_expired_tokens_flush" in app.tasks
