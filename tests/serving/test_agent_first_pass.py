"""Only the agent loop's first reconcile after its worker starts takes an engine missing then for one stopped with
the machine (started again at once, not counted as a crash). A reconcile asked for by a poke runs in a pool child
of the worker, new too the first time it handles one: an engine it finds dead has crashed, and a replica backing
off waits out its back-off."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from serving import agent, agent_loop, tasks
from serving.choices import ReplicaState
from serving.models import DeploymentEvent, Node, Replica


@pytest.fixture
def fresh_node(replica, settings):
    """The replica's node under a name no reconcile of this test run has seen, as in a newly forked child."""
    name = f"fresh-{replica.pk}"
    Node.objects.filter(pk=replica.node_id).update(name=name)
    settings.NODE_POOL, settings.NODE_ADDRESS = "cpu-pool", "127.0.0.1"
    return name


@pytest.mark.django_db
def test_an_engine_a_poke_finds_dead_is_counted_as_a_crash_and_backed_off(engines, replica, fresh_node):
    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.READY, ready_at=timezone.now())
    tasks.reconcile_node_task(fresh_node)
    replica.refresh_from_db()
    assert (replica.state, replica.restarts, replica.pid) == (ReplicaState.BACKOFF, 1, None)
    assert not DeploymentEvent.objects.filter(replica=replica, kind="adopt").exists()


@pytest.mark.django_db
def test_a_replica_backing_off_is_not_started_early_by_a_poke(engines, replica, fresh_node):
    later = timezone.now() + timedelta(minutes=5)
    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.BACKOFF, restarts=2, next_start_at=later)
    tasks.reconcile_node_task(fresh_node)
    replica.refresh_from_db()
    assert (replica.state, replica.restarts, replica.pid) == (ReplicaState.BACKOFF, 2, None)


@pytest.mark.django_db
def test_the_agent_loops_first_reconcile_starts_an_engine_missing_since_the_machine_stopped_without_counting(
    engines, replica, fresh_node
):
    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.READY, ready_at=timezone.now())
    agent.reconcile_node(fresh_node, agent_start=True)
    replica.refresh_from_db()
    assert (replica.state, replica.restarts) == (ReplicaState.STARTING, 0) and replica.pid
    assert DeploymentEvent.objects.filter(replica=replica, kind="adopt").exists()


def test_the_agent_loop_asks_for_the_first_pass_until_it_has_reconciled_once(monkeypatch, settings):
    settings.NODE_HEARTBEAT_SECONDS = 0
    monkeypatch.setattr(agent_loop, "_stop", threading.Event())
    monkeypatch.setattr(agent_loop, "close_old_connections", lambda: None)
    asked = []
    reconciled = iter([False, True, True, True])  # the first time a poke's reconcile held the node's lock

    def heartbeat(name: str, *, agent_start: bool = False) -> bool:
        asked.append(agent_start)
        if len(asked) == 4:
            agent_loop._stop.set()
        return next(reconciled)

    monkeypatch.setattr(agent, "heartbeat", heartbeat)
    agent_loop._loop("loop-node")
    assert asked == [True, True, False, False]
