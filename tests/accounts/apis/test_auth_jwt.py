"""POST /api/v1/auth/token and /auth/token/refresh: JWTs for people, throttled per client IP."""

import threading
import time
import uuid

import jwt
import pytest
from django.db import connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from hotswap.accounts.roles import Role
from tests.settings.test_security import OLD_COMMITTED_KEY

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/token/refresh"
ME = "/api/v1/auth/me"
PASSWORD = "s3cret-Passw0rd"


def test_it_obtains_a_pair_that_works_on_me(api_client, make_user):
    user = make_user(Role.MODEL_DEVELOPER)

    response = api_client.post(LOGIN, {"username": user.username, "password": PASSWORD})

    assert response.status_code == 200, response.content
    access = response.json()["access"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    me = api_client.get(ME).json()
    assert me["username"] == user.username
    assert me["roles"] == [Role.MODEL_DEVELOPER]
    assert me["auth_method"] == "jwt"
    assert me["api_token"] is None
    assert "models_app.upload_modelversion" in me["permissions"]
    assert "accounts.add_apitoken" not in me["permissions"]


def test_it_refreshes_the_access_token(api_client, make_user):
    user = make_user(Role.VIEWER)
    refresh = api_client.post(LOGIN, {"username": user.username, "password": PASSWORD}).json()["refresh"]

    response = api_client.post(REFRESH, {"refresh": refresh})

    assert response.status_code == 200, response.content
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    assert api_client.get(ME).json()["username"] == user.username


def test_it_rejects_a_bad_password_in_the_error_format(api_client, make_user):
    user = make_user(Role.ADMIN)

    response = api_client.post(LOGIN, {"username": user.username, "password": "wrong"})

    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "trace_id", "timestamp"}
    assert body["error"]["code"] == "AUTHENTICATION_FAILED"
    assert body["error"]["trace_id"] == response["X-Request-ID"]
    assert "access" not in response.content.decode()


def test_it_rejects_a_missing_password_as_a_validation_error(api_client, make_user):
    response = api_client.post(LOGIN, {"username": make_user().username})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == [{"field": "password", "message": "This field is required."}]


def test_it_rejects_a_bad_refresh_token(api_client):
    response = api_client.post(REFRESH, {"refresh": "not-a-jwt"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTHENTICATION_FAILED"


def test_it_rejects_a_tampered_access_token(api_client, make_user):
    user = make_user(Role.VIEWER)
    access = api_client.post(LOGIN, {"username": user.username, "password": PASSWORD}).json()["access"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access[:-2]}xx")

    assert api_client.get(ME).status_code == 401


def test_it_throttles_logins_per_client_ip(api_client, make_user, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": "2/minute"}
    user = make_user(Role.VIEWER)

    statuses = [api_client.post(LOGIN, {"username": user.username, "password": "wrong"}).status_code
                for _ in range(2)]
    # Even the right password is refused once the address has used up its attempts.
    response = api_client.post(LOGIN, {"username": user.username, "password": PASSWORD})

    assert statuses == [401, 401]
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "RATE_LIMITED"
    assert 0 < int(response["Retry-After"]) <= 60
    other_ip = api_client.post(LOGIN, {"username": user.username, "password": PASSWORD}, REMOTE_ADDR="10.0.0.9")
    assert other_ip.status_code == 200


def _login(client, user, password: str = PASSWORD) -> dict:
    response = client.post(LOGIN, {"username": user.username, "password": password})
    assert response.status_code == 200, response.content
    return response.json()


def _me(access: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get(ME)


def test_it_refuses_an_admin_token_forged_with_the_key_once_committed(make_user):
    admin = make_user(Role.ADMIN)
    now = int(time.time())
    claims = {"token_type": "access", "user_id": str(admin.pk), "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}

    response = _me(jwt.encode(claims, OLD_COMMITTED_KEY, algorithm="HS256"))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTHENTICATION_FAILED"


def test_it_rotates_the_refresh_token_and_refuses_a_used_one(api_client, make_user):
    user = make_user(Role.VIEWER)
    first = _login(api_client, user)["refresh"]

    rotated = api_client.post(REFRESH, {"refresh": first})
    reused = api_client.post(REFRESH, {"refresh": first})

    assert rotated.status_code == 200, rotated.content
    assert set(rotated.json()) == {"access", "refresh"}
    assert rotated.json()["refresh"] != first
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "AUTHENTICATION_FAILED"
    assert _me(rotated.json()["access"]).json()["username"] == user.username
    assert api_client.post(REFRESH, {"refresh": rotated.json()["refresh"]}).status_code == 200


def test_it_ends_every_jwt_of_a_user_whose_password_changes(api_client, make_user):
    user = make_user(Role.ADMIN)
    pair = _login(api_client, user)
    refreshed = api_client.post(REFRESH, {"refresh": pair["refresh"]}).json()

    user.set_password("An0ther-s3cret-Passw0rd")
    user.save()

    for access in (pair["access"], refreshed["access"]):
        assert _me(access).status_code == 401
    refused = api_client.post(REFRESH, {"refresh": refreshed["refresh"]})
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "The user's password has been changed."
    assert _me(_login(api_client, user, "An0ther-s3cret-Passw0rd")["access"]).status_code == 200


def test_it_refuses_the_refresh_token_of_a_deleted_user(api_client, make_user):
    user = make_user(Role.VIEWER)
    refresh = _login(api_client, user)["refresh"]
    user.delete()

    assert api_client.post(REFRESH, {"refresh": refresh}).status_code == 401


def test_it_keeps_api_tokens_working_when_the_password_changes(make_user, make_token, token_client):
    user = make_user(Role.MODEL_DEVELOPER)
    _token, key = make_token(user=user)

    user.set_password("An0ther-s3cret-Passw0rd")
    user.save()

    me = token_client(key).get(ME)
    assert me.status_code == 200
    assert me.json()["auth_method"] == "api_token"


@pytest.mark.django_db(transaction=True)
def test_it_lets_only_one_of_two_concurrent_uses_of_a_refresh_token_through(make_user, monkeypatch):
    refresh = _login(APIClient(), make_user(Role.VIEWER))["refresh"]
    # Both requests have passed the blacklist check (on reading the token) before either blacklists it.
    both_checked = threading.Barrier(2, timeout=30)
    blacklist = RefreshToken.blacklist

    def blacklist_when_both_checked(token):
        both_checked.wait()
        return blacklist(token)

    monkeypatch.setattr(RefreshToken, "blacklist", blacklist_when_both_checked)
    statuses = []

    def use():
        statuses.append(APIClient().post(REFRESH, {"refresh": refresh}).status_code)
        connection.close()

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200, 401]
