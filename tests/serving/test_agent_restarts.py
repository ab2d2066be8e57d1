"""The agent's restarts, with real (stand-in) engine processes: an engine started by a start that then failed
does not stay running unknown to anyone, and the restart limit counts crashes in a row, not over a replica's
whole life."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError
from django.utils import timezone

from serving import agent, processes, replica_meter
from serving.choices import ReplicaState
from serving.models import Replica
from tests.serving.test_agent_keys import reconcile_until

pytestmark = pytest.mark.django_db


def test_an_engine_whose_start_fails_after_it_was_spawned_is_killed_not_forgotten(
    engines, replica, monkeypatch, settings
):
    spawned = []
    real_start = processes.start

    def start(*args, **kwargs) -> int:
        spawned.append(real_start(*args, **kwargs))
        return spawned[-1]

    def database_down(replica: Replica) -> None:
        raise DatabaseError("the connection was lost")

    monkeypatch.setattr(processes, "start", start)
    monkeypatch.setattr(replica_meter, "started", database_down)
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert (replica.state, replica.pid, replica.restarts) == (ReplicaState.BACKOFF, None, 1)
    (pid,) = spawned
    assert processes.find(pid, replica.pk) is None, (
        "the engine runs on, and a second one starts after back-off"
    )
    assert not processes.engines_on_this_machine(under=settings.DATA_DIR)


def test_a_replica_ready_long_enough_has_its_earlier_restarts_forgiven(engines, replica):
    ready = reconcile_until(replica, ReplicaState.READY)
    long_ago = timezone.now() - agent.STABLE_AFTER - timedelta(seconds=1)
    Replica.objects.filter(pk=ready.pk).update(restarts=5, ready_at=long_ago)
    agent.reconcile_node("keys-node")
    ready.refresh_from_db()
    assert (ready.state, ready.restarts) == (ReplicaState.READY, 0)


def test_a_replica_ready_only_briefly_keeps_counting_its_restarts(engines, replica):
    ready = reconcile_until(replica, ReplicaState.READY)
    lately = timezone.now() - agent.STABLE_AFTER + timedelta(minutes=1)
    Replica.objects.filter(pk=ready.pk).update(restarts=5, ready_at=lately)
    agent.reconcile_node("keys-node")
    ready.refresh_from_db()
    assert (ready.state, ready.restarts) == (ReplicaState.READY, 5)


def test_a_replica_of_the_previous_generation_is_not_started_again_with_the_new_one(
    engines, replica, monkeypatch
):
    """A version change is under way and its surge cannot be placed, so the old replica keeps serving; it
    crashes. It used to be started again with the deployment's new version and engine arguments, inside the
    room reserved for the old ones (a larger model in a smaller reservation). It stops, for the plan to
    replace it with one of the new generation."""
    from django.db.models import F

    from serving.choices import DesiredState
    from serving.models import Deployment

    spawned = []
    monkeypatch.setattr(processes, "start", lambda *args, **kwargs: spawned.append(args) or 0)
    earlier = timezone.now() - timedelta(seconds=1)
    Replica.objects.filter(pk=replica.pk).update(
        state=ReplicaState.BACKOFF, restarts=1, next_start_at=earlier
    )
    Deployment.objects.filter(pk=replica.deployment_id).update(generation=F("generation") + 1)
    agent.reconcile_node("keys-node")
    replica.refresh_from_db()
    assert spawned == [], "no engine of the new version in the old reservation"
    assert (replica.state, replica.desired) == (ReplicaState.STOPPED, DesiredState.STOPPED)


def test_an_engine_whose_pid_was_reused_has_nothing_of_the_new_owner_killed(engines, replica):
    """The engine exited while the agent was busy, and its pid now names another process leading its own
    process group (another replica's engine, started with a session of its own): the crash's clean-up used
    to kill that whole group."""
    import subprocess

    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.READY, pid=other.pid)
        agent.reconcile_node("keys-node")
        replica.refresh_from_db()
        assert replica.state == ReplicaState.BACKOFF, "the replica's own engine is gone: a crash"
        assert other.poll() is None, "the process now holding the pid lives on"
    finally:
        other.kill()
        other.wait()


def test_an_engine_another_process_started_and_did_not_reap_has_what_is_left_of_its_group_stopped(
    engines, replica, tmp_path
):
    """The reconcile runs in any of the agent's processes, and only the one that started an engine can reap
    it: a crashed engine stayed a zombie, which passed for a process that had taken its pid, and the rest of
    its group (a resource tracker, a worker) was left running for good after every crash."""
    import contextlib
    import subprocess
    import sys
    import time

    import psutil

    pids = tmp_path / "pids"
    engine = f"import subprocess, time; open({str(pids)!r}, 'w').write(str(subprocess.Popen(['sleep', '60']).pid)); time.sleep(0.3)"
    starter = subprocess.Popen(  # an agent process: starts the engine, then never waits for it
        [sys.executable, "-c", f"import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', {engine!r}], start_new_session=True).pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        engine_pid = int(starter.stdout.readline())
        deadline = time.monotonic() + 20
        while (
            not (pids.exists() and pids.read_text())
            or psutil.Process(engine_pid).status() != psutil.STATUS_ZOMBIE
        ):
            assert time.monotonic() < deadline, "the engine did not exit"
            time.sleep(0.05)
        left = psutil.Process(int(pids.read_text()))
        Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.READY, pid=engine_pid)
        agent.reconcile_node("keys-node")
        replica.refresh_from_db()
        assert replica.state == ReplicaState.BACKOFF
        left.wait(timeout=10)  # raises TimeoutExpired if the rest of the group still runs
    finally:
        starter.kill()
        starter.wait()
        if pids.exists() and pids.read_text():
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(int(pids.read_text())).kill()  # left by a failing run, not for 60 s
