"""Fixtures for the device agent: real ONNX models, a fake HotSwap server over HTTP, agents in a tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hotswap_device import Agent
from tests.artifacts import onnx_model_bytes
from tests.device.fakeserver import FakeServer

# The server-side fixtures of the agent-against-the-real-application tests (test_agent_server.py, test_live.py).
from tests.devices.conftest import _forget_known_versions, make_version  # noqa: F401


@pytest.fixture(scope="session")
def models() -> dict[str, bytes]:
    """Three distinct real models (different weights, so different sha256)."""
    return {"1.0.0": onnx_model_bytes(hidden=8), "1.1.0": onnx_model_bytes(hidden=9),
            "1.2.0": onnx_model_bytes(hidden=10)}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


@pytest.fixture
def make_agent(server: FakeServer, tmp_path: Path):
    made: list[Agent] = []

    def make(data_dir: Path | None = None, **options) -> Agent:
        options = {"enroll_key": server.enroll_key, "device_id": "cam-1", "grace_seconds": 0.05,
                   "warmup_runs": 1, "backoff_base_seconds": 1.0, **options}
        agent = Agent(server.url, data_dir or tmp_path / "agent", **options)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()
