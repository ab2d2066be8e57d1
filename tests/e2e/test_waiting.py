"""The e2e layer's ``wait``: on a time-out it fails with the logs, including those of an engine whose log
file was written only after the wait began (a folder given stands for the logs in it at the time-out)."""

from __future__ import annotations

import threading

import pytest

from tests.e2e.agent import wait


def test_a_time_out_shows_the_logs_written_into_a_folder_after_the_wait_began(tmp_path):
    engines = tmp_path / "engines"
    engines.mkdir()
    agent_log = tmp_path / "agent.log"
    agent_log.write_text("agent: starting the engine\n")
    # The engine's log appears while the wait runs, as a replica's does once the agent starts it.
    threading.Timer(0.1, lambda: (engines / "replica-1.log").write_text("engine: out of memory\n")).start()
    with pytest.raises(pytest.fail.Exception) as failed:
        wait("the replica", lambda: None, 0.5, [agent_log, engines], interval=0.05)
    message = str(failed.value)
    assert "agent: starting the engine" in message
    assert "--- replica-1.log ---" in message and "engine: out of memory" in message
