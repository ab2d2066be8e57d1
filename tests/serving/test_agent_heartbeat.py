"""A long reconcile (a model of many GB downloaded, engines stopped with a grace, slow probes) must not make the
node look silent: it would be marked lost, its replicas forgotten and their healthy engines killed as orphans
when the agent came back. Nor may the reconcile lock time out under it, letting a second reconcile start the
same engines. The agent beats and keeps its lock from another thread while it reconciles."""

from __future__ import annotations

import time

import pytest
import redis

from serving import agent, agent_lock, prefetch, reconcile
from serving.choices import NodeState, PoolKind, ReplicaState
from serving.models import ComputePool, DeploymentEvent, Node

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection


@pytest.fixture
def quick_heartbeat(settings):
    settings.NODE_HEARTBEAT_SECONDS = 1
    settings.NODE_LOST_AFTER_SECONDS = 3
    settings.NODE_POOL = "cpu-pool"
    settings.NODE_ADDRESS = "127.0.0.1"
    ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)


def test_a_reconcile_longer_than_the_lost_after_time_does_not_get_the_node_marked_lost(
    quick_heartbeat, monkeypatch, settings
):
    settings.NODE_LOST_AFTER_SECONDS = 6  # room for a beat or two late on a busy runner
    lost_meanwhile = []

    def slow_reconcile(name: str, **options) -> None:
        time.sleep(8)  # past NODE_LOST_AFTER_SECONDS
        lost_meanwhile.extend(reconcile.mark_lost_nodes())  # what the control plane's beat runs

    monkeypatch.setattr(agent, "reconcile_node", slow_reconcile)
    agent.heartbeat("slow-node")
    assert lost_meanwhile == []
    assert Node.objects.get(name="slow-node").state == NodeState.READY


def test_a_reconcile_longer_than_its_lock_keeps_the_lock(quick_heartbeat, monkeypatch, settings):
    monkeypatch.setattr(agent_lock, "LOCK_TIMEOUT", 2)
    taken_meanwhile = []

    def slow_reconcile(name: str, **options) -> None:
        time.sleep(4)  # past LOCK_TIMEOUT
        taken_meanwhile.append(agent_lock.acquire_node_lock(name))

    monkeypatch.setattr(agent, "reconcile_node", slow_reconcile)
    try:
        agent.heartbeat("slow-lock-node")
    finally:
        redis.Redis.from_url(settings.REDIS_URL).delete("portfolio:lease:node-reconcile:slow-lock-node")
    assert taken_meanwhile == [None], "a second reconcile got the lock of one still running"


def test_a_reconcile_hung_past_its_longest_stops_being_kept_alive_so_the_node_fails_over(
    quick_heartbeat, monkeypatch
):
    """A reconcile that never ends (a read without a timeout) must not keep its node looking alive for ever:
    past RECONCILE_KEPT_FOR the heartbeat stops and the node is marked lost, its replicas placed elsewhere."""
    from datetime import timedelta

    monkeypatch.setattr(agent_lock, "RECONCILE_KEPT_FOR", timedelta(seconds=1))
    lost_meanwhile = []

    def hung_reconcile(name: str, **options) -> None:
        time.sleep(6)  # past RECONCILE_KEPT_FOR, then NODE_LOST_AFTER_SECONDS of silence
        lost_meanwhile.extend(reconcile.mark_lost_nodes())

    monkeypatch.setattr(agent, "reconcile_node", hung_reconcile)
    agent.heartbeat("hung-node")
    assert lost_meanwhile == ["hung-node"]


def test_a_reconcile_whose_lock_is_taken_over_midway_starts_no_engine_and_the_next_one_does(
    engines, replica, monkeypatch, settings, caplog
):
    """Paused past its lock's timeout (here: while it downloads the model), a reconcile finds the lock taken by
    another agent: it must not start the engine that agent may be starting too, nor record a failed start."""
    settings.NODE_HEARTBEAT_SECONDS = 1
    settings.NODE_POOL, settings.NODE_ADDRESS = "cpu-pool", "127.0.0.1"
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = "portfolio:lease:node-reconcile:keys-node"
    locks = []
    real_acquire, ready_model = agent_lock.acquire_node_lock, prefetch.local_copy

    def acquire(name: str):
        locks.append(real_acquire(name))
        return locks[-1]

    def download_meanwhile_taken_over(version, wait=None):
        client.set(key, "elsewhere.example:1:other", ex=600)  # its lease lapsed; another agent took it
        assert locks[-1].lost.wait(5), "the heartbeat thread never noticed"
        return ready_model(version, wait=wait)

    monkeypatch.setattr(agent_lock, "acquire_node_lock", acquire)
    monkeypatch.setattr(prefetch, "local_copy", download_meanwhile_taken_over)
    try:
        reconciled = agent.heartbeat("keys-node")
        replica.refresh_from_db()
        assert (replica.state, replica.pid, replica.restarts) == (ReplicaState.PENDING, None, 0)
        assert not DeploymentEvent.objects.filter(replica=replica).exists()
        assert reconciled is False
        assert "reconcile lock lost to another process" in caplog.text

        client.delete(key)  # the other agent's reconcile is over
        monkeypatch.setattr(prefetch, "local_copy", ready_model)
        assert agent.heartbeat("keys-node") is True
        replica.refresh_from_db()
        assert replica.state == ReplicaState.STARTING and replica.pid
    finally:
        client.delete(key)


@pytest.mark.parametrize("held", [NodeState.CORDONED, NodeState.DRAINING])
def test_a_cordoned_node_that_went_silent_comes_back_cordoned(org, held):
    """An admin cordons a node and stops its agent for maintenance: the node is marked lost, and its agent's
    return used to make it ready, new replicas and fine-tunes placed on it within seconds."""
    from datetime import timedelta

    from django.utils import timezone

    from serving.services import pools
    from tests.conftest import actor_for

    pool = ComputePool.objects.create(name="maint-pool", kind=PoolKind.CPU)
    node = Node.objects.create(name="maint-node", pool=pool, address="127.0.0.1", heartbeat_at=timezone.now())
    pools.set_node_state(actor=actor_for(org["admin"]), node=node, state=held)
    Node.objects.filter(pk=node.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert reconcile.mark_lost_nodes() == ["maint-node"]
    agent.register("maint-node", "maint-pool", "127.0.0.1", {"cpu_cores": 2, "memory_bytes": 2**32})
    node.refresh_from_db()
    assert (node.state, node.state_before_lost) == (held, "")
    Node.objects.filter(pk=node.pk).update(
        state=NodeState.READY, heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    reconcile.mark_lost_nodes()
    agent.register("maint-node", "maint-pool", "127.0.0.1", {"cpu_cores": 2, "memory_bytes": 2**32})
    assert Node.objects.get(pk=node.pk).state == NodeState.READY, "a ready one comes back ready"


def test_a_node_whose_clock_is_behind_is_not_marked_lost_while_it_beats(monkeypatch):
    """The agent wrote its heartbeat with its own clock and the control plane compared with its own: a node
    20 s behind looked silent at every pass, was marked lost, its replicas forgotten, and its healthy
    engines killed as orphans when it came back. Both sides use the database's clock."""
    from datetime import timedelta
    from types import SimpleNamespace

    from django.utils import timezone

    behind = SimpleNamespace(now=lambda: timezone.now() - timedelta(seconds=20))
    monkeypatch.setattr(agent, "timezone", behind)
    monkeypatch.setattr(agent_lock, "timezone", behind, raising=False)
    ComputePool.objects.create(name="skewed-pool", kind=PoolKind.CPU)
    agent.register("skewed-node", "skewed-pool", "127.0.0.1", {"cpu_cores": 2, "memory_bytes": 2**32})
    assert reconcile.mark_lost_nodes() == []
    agent_lock.beat("skewed-node")
    assert reconcile.mark_lost_nodes() == []
    assert Node.objects.get(name="skewed-node").state == NodeState.READY
