"""Alerts reach the webhook, retried until it answers 2xx."""

import json
from http.server import BaseHTTPRequestHandler

import pytest
from django.test import override_settings

from rollouts.tasks import alert_deliver
from tests.live import http_server


@pytest.fixture
def webhook():
    """A real HTTP server that fails twice (500), then accepts: yields (url, received bodies)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(500 if len(received) <= 2 else 204)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http_server(Handler) as port:
        yield f"http://127.0.0.1:{port}/hooks/hotswap", received


def test_a_failing_webhook_is_retried_until_it_accepts(webhook):
    url, received = webhook
    payload = {"kind": "rolled_back", "distribution": 7, "reason": "p99 latency +48 %"}
    with override_settings(ROLLOUT_ALERT_WEBHOOK_URL=url):
        alert_deliver.apply(args=[payload])
    assert received == [payload, payload, payload]


def test_an_alert_is_logged_and_posted_after_commit(make_fleet, make_version, caplog,
                                                    django_capture_on_commit_callbacks):
    from rollouts.alerts import alert_raise
    from rollouts.services import distribution_create

    make_fleet({"eu": 2})
    distribution = distribution_create(version=make_version(), strategy="direct")
    with override_settings(ROLLOUT_ALERT_WEBHOOK_URL="http://127.0.0.1:9/unused"), \
            django_capture_on_commit_callbacks(execute=False) as callbacks:
        payload = alert_raise(distribution=distribution, kind="paused", reason="2 of 10 installs failed")
    assert payload["version"] == "resnet-1.0.0" and payload["kind"] == "paused"
    assert len(callbacks) == 1
    assert "rollout alert: paused: 2 of 10 installs failed" in caplog.text
