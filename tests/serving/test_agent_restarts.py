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
