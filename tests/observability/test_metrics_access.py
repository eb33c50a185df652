"""Who may read /metrics: the allowed networks (localhost by default, every proxy hop included) or the token."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-metrics-token"


@pytest.fixture(autouse=True)
def _uncached(settings):
    settings.METRICS_CACHE_SECONDS = 0


def get(**meta):
    return Client().get("/metrics", **meta)


def test_localhost_reads_the_metrics_by_default():
    assert get().status_code == 200
    assert get(REMOTE_ADDR="::1").status_code == 200


def test_other_networks_are_refused_by_default():
    response = get(REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "PERMISSION_DENIED"


def test_a_local_proxy_does_not_open_the_metrics_to_the_hosts_it_forwards_for():
    assert get(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 403
    assert get(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1, 203.0.113.7").status_code == 403
    assert get(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="not-an-address").status_code == 403
    assert get(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 200


def test_configured_networks_are_let_in(settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "2001:db8::/32"]
    assert get(REMOTE_ADDR="10.1.2.3").status_code == 200
    assert get(REMOTE_ADDR="2001:db8::5").status_code == 200
    assert get(REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert get(REMOTE_ADDR="127.0.0.1").status_code == 403


def test_the_token_opens_the_metrics_from_anywhere(settings):
    settings.METRICS_TOKEN = TOKEN
    assert get(REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert get(REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200


def test_a_missing_or_wrong_token_gets_401(settings):
    settings.METRICS_TOKEN = TOKEN
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": f"Token {TOKEN}"}):
        response = get(REMOTE_ADDR="203.0.113.7", **headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"hotswap_" not in response.content


def test_without_networks_only_the_token_opens_the_metrics(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    assert get().status_code == 401
    assert get(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,not-a-network", "not-a-network"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT"),
])
def test_a_bad_setting_fails_at_start(monkeypatch, variable, value, message):
    import importlib

    import environ

    from hotswap.settings import observability

    monkeypatch.setenv(variable, value)
    with pytest.raises(environ.ImproperlyConfigured, match=message):
        importlib.reload(observability)
    monkeypatch.undo()
    importlib.reload(observability)
