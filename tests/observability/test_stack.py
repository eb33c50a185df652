"""runstack's observability defaults, and /metrics under several gunicorn workers (multiprocess mode)."""

from __future__ import annotations

import pytest
import requests

from hotswap.observability.stack import MULTIPROC_SUBDIR, stack_environment
from tests.live import gunicorn_server
from tests.observability.conftest import samples


def test_runstack_children_log_readably_and_share_a_fresh_multiprocess_dir(tmp_path):
    stale = tmp_path / MULTIPROC_SUBDIR / "counter_123.db"
    stale.parent.mkdir()
    stale.write_bytes(b"old values")

    env = stack_environment({}, tmp_path)

    assert env["LOG_FORMAT"] == "console"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / MULTIPROC_SUBDIR)
    assert not stale.exists()


def test_an_explicit_choice_is_kept(tmp_path):
    env = stack_environment({"LOG_FORMAT": "json", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp")}, tmp_path)
    assert env["LOG_FORMAT"] == "json"
    assert (tmp_path / "mp").is_dir() and env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "mp")


def test_runstack_itself_logs_readably_unless_told_otherwise(monkeypatch):
    import importlib
    import sys

    from hotswap.settings import observability

    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.setattr(sys, "argv", ["manage.py", "runstack"])
    assert importlib.reload(observability).LOG_FORMAT == "console"
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert importlib.reload(observability).LOG_FORMAT == "json"
    monkeypatch.undo()
    assert importlib.reload(observability).LOG_FORMAT == "json"


@pytest.mark.django_db
def test_every_worker_serves_the_same_totals_in_multiprocess_mode(tmp_path):
    env = stack_environment({}, tmp_path)
    with gunicorn_server(env=env, workers=3) as (base, _process):
        with requests.Session() as session:
            for _ in range(40):
                assert session.get(f"{base}/health", timeout=10).status_code == 200
        seen = set()
        for _ in range(8):
            with requests.Session() as fresh:  # a new connection, so any worker may answer
                text = fresh.get(f"{base}/metrics", timeout=10).text
            values = samples(text)
            seen.add(sum(value for (name, labels), value in values.items()
                         if name == "django_http_requests_total_by_view_transport_method_total"
                         and dict(labels).get("view") == "health"))
            assert values["hotswap_domain_metrics_up", frozenset()] == 1
    assert seen == {40}
    assert len(list((tmp_path / MULTIPROC_SUBDIR).glob("*.db"))) >= 2
