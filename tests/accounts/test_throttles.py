"""Throttles keyed on the real client: X-Forwarded-For counts only when a trusted proxy (TRUSTED_PROXIES) sent it."""

import pytest
from rest_framework.test import APIClient

from hotswap.accounts.roles import Role

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/token"
ENROLL = "/api/v1/devices/enroll"
PEER = "198.51.100.7"


def login(username: str, **headers) -> int:
    return APIClient().post(LOGIN, {"username": username, "password": "wrong"}, **headers).status_code


def enroll(**headers) -> int:
    body = {"enrollment_key": "hse_00000000_guess", "device_id": "cam-1"}
    return APIClient().post(ENROLL, body, format="json", **headers).status_code


def test_it_throttles_password_guessing_from_one_peer_whatever_x_forwarded_for_says(make_user, settings):
    username = make_user(Role.ADMIN).username
    allowed = int(settings.THROTTLE_RATES["login"].split("/")[0])  # 30/minute unless THROTTLE_LOGIN says otherwise

    statuses = [login(username, REMOTE_ADDR=PEER, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}") for i in range(60)]

    assert statuses == [401] * allowed + [429] * (60 - allowed)


def test_it_throttles_enrollment_from_one_peer_whatever_x_forwarded_for_says(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "enroll": "3/minute"}

    statuses = [enroll(REMOTE_ADDR=PEER, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}") for i in range(6)]

    assert statuses == [403] * 3 + [429] * 3


def test_it_gives_each_client_behind_a_trusted_proxy_its_own_bucket(make_user, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": "2/minute"}
    username = make_user(Role.VIEWER).username

    def via_proxy(forwarded_for: str) -> int:
        return login(username, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded_for)

    assert [via_proxy("203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert via_proxy("203.0.113.2") == 401
    # Hops left of the proxy's are the client's own words: prepending others does not make a new client.
    assert via_proxy("192.0.2.50, 203.0.113.1") == 429
    # Through two trusted proxies (10.0.0.3 forwarded to 10.0.0.2): still the client before them.
    assert via_proxy("203.0.113.1, 10.0.0.3") == 429
    # The same header from a peer that is not a proxy names nobody: the peer itself is the client.
    assert login(username, REMOTE_ADDR=PEER, HTTP_X_FORWARDED_FOR="203.0.113.3") == 401
    assert login(username, REMOTE_ADDR=PEER, HTTP_X_FORWARDED_FOR="203.0.113.4") == 401
    assert login(username, REMOTE_ADDR=PEER, HTTP_X_FORWARDED_FOR="203.0.113.5") == 429
