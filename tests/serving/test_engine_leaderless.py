"""An engine whose leader died (vLLM's API server killed or crashed) can leave its engine core running, in the
engine's process group, with the model's memory held. Every look-up went by the group's leader, so neither the
agent's sweep nor the launcher's clean-up ever stopped it. Now both stop what a dead leader left, whether its
replica is still wanted (it gets a new engine of its own) or not."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import psutil
import pytest
from django.conf import settings

from portfolio import launcher
from serving import agent, engine_sweep, processes

pytestmark = pytest.mark.django_db

# The leader starts a child in its group (as vLLM starts its engine core) and exits at once.
LEADER = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('x')"


@pytest.fixture
def left(engines, replica):
    """What a dead leader of ``replica``'s engine left running; killed at the end whatever the test did."""
    process = left_by_a_dead_leader(replica)
    yield process
    with contextlib.suppress(psutil.Error):
        process.kill()


def left_by_a_dead_leader(replica) -> psutil.Process:
    leader = processes.start([sys.executable, "-c", LEADER], {}, replica.pk, agent._log_path(replica))
    deadline = time.monotonic() + 60
    while True:
        children = [p for p in psutil.process_iter(["pid"]) if _in_group(p, leader) and p.pid != leader]
        if children and processes.find(leader, replica.pk) is None:
            return children[0]
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)  # nothing of it outlives the test
            raise AssertionError("the leader's child never started, or the leader never exited")
        time.sleep(0.1)


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, psutil.Error):
        return False


def gone(process: psutil.Process) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_what_a_dead_leader_left_of_a_wanted_replica_is_stopped_by_the_sweep(left, replica):
    assert [rid for rid, _ in processes.leaderless(settings.DATA_DIR)] == [replica.pk]

    engine_sweep.stop_orphans(replica.node, {replica.pk}, None)

    assert gone(left)
    assert processes.leaderless(settings.DATA_DIR) == []


def test_the_launchers_clean_up_stops_what_a_dead_leader_left(left):
    launcher.stop_work_under(settings.DATA_DIR)

    assert gone(left)


def test_a_living_engines_own_processes_are_not_leaderless(engines, replica):
    leader = processes.start(
        [sys.executable, "-c", LEADER.replace("print('x')", "import time; time.sleep(600)")],
        {},
        replica.pk,
        agent._log_path(replica),
    )
    try:
        deadline = time.monotonic() + 30
        while len([p for p in psutil.process_iter(["pid"]) if _in_group(p, leader)]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert processes.leaderless(settings.DATA_DIR) == []
    finally:
        processes.stop(psutil.Process(leader), grace=5)
