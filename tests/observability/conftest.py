"""Fixtures for observability tests: the fleet builders of the device and rollout tests, a /metrics reader."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.devices.conftest import make_device, make_enrolled_device, make_version  # noqa: F401 - fixtures
from tests.rollouts.conftest import make_fleet  # noqa: F401 - fixture


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset of label pairs): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def scrape(settings):
    """scrape() -> (samples, text) of GET /metrics from localhost, uncached."""
    settings.METRICS_CACHE_SECONDS = 0

    def get(**headers) -> tuple[dict, str]:
        response = Client().get("/metrics", **headers)
        assert response.status_code == 200, response.content
        text = response.content.decode()
        return samples(text), text

    return get
