"""GET/POST /api/v1/tokens and DELETE /api/v1/tokens/{id}: Admin only."""

from datetime import timedelta

import pytest
from django.utils import timezone

from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import Role
from hotswap.accounts.services import api_token_revoke

pytestmark = pytest.mark.django_db

TOKENS = "/api/v1/tokens"
ME = "/api/v1/auth/me"


def test_it_creates_a_token_and_shows_the_key_once(client_for, make_user, token_client):
    admin = client_for(Role.ADMIN)
    ci_user = make_user(Role.MODEL_DEVELOPER, username="ci-bot")
    expires_at = (timezone.now() + timedelta(days=30)).replace(microsecond=0)

    response = admin.post(TOKENS, {"name": "github-actions", "username": "ci-bot",
                                   "expires_at": expires_at.isoformat()})

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"id", "name", "user", "prefix", "key", "created_at", "expires_at"}
    assert body["name"] == "github-actions" and body["user"] == "ci-bot"
    assert body["key"].startswith(f"hs_{body['prefix']}_")
    assert ApiToken.objects.get(pk=body["id"]).user == ci_user
    # The key works, as ci-bot, and is never shown again.
    me = token_client(body["key"]).get(ME).json()
    assert me["username"] == "ci-bot" and me["auth_method"] == "api_token"
    listing = admin.get(TOKENS).content.decode()
    assert body["prefix"] in listing and body["key"] not in listing


def test_it_creates_a_token_for_the_caller_by_default(make_user, make_token, token_client):
    admin = make_user(Role.ADMIN)
    _, bootstrap_key = make_token(user=admin, name="bootstrap")

    response = token_client(bootstrap_key).post(TOKENS, {"name": "second"})

    assert response.status_code == 201, response.content
    token = ApiToken.objects.get(pk=response.json()["id"])
    assert token.user == admin and token.created_by == admin


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MODEL_DEVELOPER, Role.OPERATOR, None])
def test_it_forbids_every_role_but_admin(client_for, make_token, role):
    client = client_for(role)
    token, _ = make_token()

    responses = [client.get(TOKENS), client.post(TOKENS, {"name": "x"}), client.delete(f"{TOKENS}/{token.pk}")]

    assert [r.status_code for r in responses] == [403, 403, 403]
    assert {r.json()["error"]["code"] for r in responses} == {"PERMISSION_DENIED"}
    assert ApiToken.objects.count() == 1
    assert ApiToken.objects.get().revoked_at is None


def test_it_answers_401_to_anonymous_callers(api_client, make_token):
    token, _ = make_token()

    responses = [api_client.get(TOKENS), api_client.post(TOKENS, {"name": "x"}),
                 api_client.delete(f"{TOKENS}/{token.pk}")]

    assert [r.status_code for r in responses] == [401, 401, 401]
    assert {r.json()["error"]["code"] for r in responses} == {"NOT_AUTHENTICATED"}


def test_it_forbids_a_non_admin_token_holder(make_user, make_token, token_client):
    _, key = make_token(user=make_user(Role.OPERATOR))

    response = token_client(key).post(TOKENS, {"name": "escalate"})

    assert response.status_code == 403


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "ci", "username": "nobody"}, "username"),
    ({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
])
def test_it_rejects_invalid_input(client_for, payload, field):
    response = client_for(Role.ADMIN).post(TOKENS, payload)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == [field]
    assert not ApiToken.objects.exists()


def test_it_revokes_a_token_and_the_key_stops_working(client_for, make_token, token_client):
    token, key = make_token()
    admin = client_for(Role.ADMIN)

    first = admin.delete(f"{TOKENS}/{token.pk}")
    second = admin.delete(f"{TOKENS}/{token.pk}")

    assert (first.status_code, second.status_code) == (204, 204)
    token.refresh_from_db()
    assert token.revoked_at is not None and token.revoked_by is not None
    assert token_client(key).get(ME).status_code == 401


def test_it_answers_404_for_an_unknown_token(client_for):
    response = client_for(Role.ADMIN).delete(f"{TOKENS}/999999")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "API_TOKEN_NOT_FOUND"


def test_it_lists_tokens_paginated_without_secrets(client_for, make_user, make_token):
    owner = make_user(Role.VIEWER, username="owner")
    make_token(user=owner, name="active")
    revoked, _ = make_token(user=owner, name="revoked")
    api_token_revoke(token=revoked, revoked_by=None)
    make_token(name="someone-else")
    admin = client_for(Role.ADMIN)

    page = admin.get(TOKENS, {"page_size": 2}).json()
    mine = admin.get(TOKENS, {"username": "owner", "active": "true"}).json()
    gone = admin.get(TOKENS, {"active": "false"}).json()

    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert "key_hash" not in page["results"][0] and "key" not in page["results"][0]
    assert [t["name"] for t in mine["results"]] == ["active"]
    assert mine["results"][0]["is_active"] is True
    assert [t["name"] for t in gone["results"]] == ["revoked"]


def test_it_refuses_other_methods_on_the_collection(client_for):
    response = client_for(Role.ADMIN).put(TOKENS, {})

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
