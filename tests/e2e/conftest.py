"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from serving import processes
from tests.e2e.agent import start_agent, stop_agent


@pytest.fixture
def node_agent(tmp_path):
    """`portfolio node-agent` as its own process, against the test database and this Redis."""
    log = tmp_path / "agent.log"
    agents = [start_agent(tmp_path, log)]
    yield agents, log
    for process in agents:
        if process.poll() is None:
            stop_agent(process)
    # What dead leaders left too (a vLLM engine core outliving its API server): nothing else stops those.
    for _, engine in processes.all_engines(under=tmp_path) + processes.leaderless(under=tmp_path):
        processes.stop(engine, grace=10)
