"""ApiTokenAuthentication, exercised through GET /api/v1/auth/me with real `Authorization: Token` headers."""

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import Role
from hotswap.accounts.services import api_token_revoke

pytestmark = pytest.mark.django_db

ME = "/api/v1/auth/me"


def _assert_auth_failed(response, message_part: str) -> None:
    assert response.status_code == 401, response.content
    error = response.json()["error"]
    assert error["code"] == "AUTHENTICATION_FAILED"
    assert message_part in error["message"]


def test_it_authenticates_with_a_valid_token(make_user, make_token, token_client):
    user = make_user(Role.OPERATOR)
    token, key = make_token(user=user, name="deploy-bot")

    response = token_client(key).get(ME)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["username"] == user.username
    assert body["roles"] == [Role.OPERATOR]
    assert body["auth_method"] == "api_token"
    assert body["api_token"] == {"id": token.pk, "name": "deploy-bot", "prefix": token.prefix, "expires_at": None}


def test_it_rejects_a_revoked_token(make_token, token_client):
    token, key = make_token()
    api_token_revoke(token=token, revoked_by=None)

    _assert_auth_failed(token_client(key).get(ME), "revoked")


def test_it_rejects_an_expired_token(make_token, token_client):
    t0 = timezone.now()
    _, key = make_token(expires_at=t0 + timedelta(hours=1))
    assert token_client(key).get(ME).status_code == 200

    with mock.patch("django.utils.timezone.now", return_value=t0 + timedelta(hours=1, seconds=1)):
        response = token_client(key).get(ME)

    _assert_auth_failed(response, "expired")


def test_it_rejects_the_right_prefix_with_a_wrong_secret(make_token, token_client):
    token, key = make_token()
    forged = f"hs_{token.prefix}_{'A' * 43}"
    assert forged != key

    _assert_auth_failed(token_client(forged).get(ME), "Invalid API token")


def test_it_rejects_an_unknown_prefix(make_token, token_client):
    _, key = make_token()
    unknown = "hs_00000000_" + key.split("_", 2)[2]

    _assert_auth_failed(token_client(unknown).get(ME), "Invalid API token")


@pytest.mark.parametrize("header", ["Token", "Token a b", "Token not-a-key", "Token hs_XYZ_secret", "Token hs_1234"])
def test_it_rejects_a_malformed_header(api_client, make_token, header):
    make_token()
    api_client.credentials(HTTP_AUTHORIZATION=header)

    _assert_auth_failed(api_client.get(ME), "Malformed")


def test_it_rejects_a_token_whose_user_is_inactive(make_user, make_token, token_client):
    user = make_user(Role.ADMIN)
    _, key = make_token(user=user)
    user.is_active = False
    user.save()

    _assert_auth_failed(token_client(key).get(ME), "inactive")


def test_it_answers_401_without_credentials(api_client):
    response = api_client.get(ME)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"


def test_it_writes_last_used_at_once_a_minute_at_most(make_token, token_client):
    token, key = make_token()
    client = token_client(key)
    t0 = timezone.now()

    with mock.patch("django.utils.timezone.now", return_value=t0):
        assert client.get(ME).status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at == t0

    with mock.patch("django.utils.timezone.now", return_value=t0 + timedelta(seconds=59)):
        assert client.get(ME).status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at == t0

    with mock.patch("django.utils.timezone.now", return_value=t0 + timedelta(seconds=61)):
        assert client.get(ME).status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at == t0 + timedelta(seconds=61)


def test_it_does_not_write_at_all_inside_the_window(make_token, token_client, django_assert_num_queries):
    _, key = make_token()
    client = token_client(key)
    client.get(ME)

    # Token lookup (with its user), then roles and permissions for /me: no UPDATE on the hot path.
    with django_assert_num_queries(4) as context:
        assert client.get(ME).status_code == 200
    assert not any(q["sql"].startswith("UPDATE") for q in context.captured_queries)
