"""A long reconcile (a model of many GB downloaded, engines stopped with a grace, slow probes) must not make the
node look silent: it would be marked lost, its replicas forgotten and their healthy engines killed as orphans
when the agent came back. Nor may the reconcile lock time out under it, letting a second reconcile start the
same engines. The agent beats and keeps its lock from another thread while it reconciles."""

from __future__ import annotations

import time

import pytest
import redis

from serving import agent, agent_lock, reconcile
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Node

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection


@pytest.fixture
def quick_heartbeat(settings):
    settings.NODE_HEARTBEAT_SECONDS = 1
    settings.NODE_LOST_AFTER_SECONDS = 3
    settings.NODE_POOL = "cpu-pool"
    settings.NODE_ADDRESS = "127.0.0.1"
    ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)


def test_a_reconcile_longer_than_the_lost_after_time_does_not_get_the_node_marked_lost(
    quick_heartbeat, monkeypatch
):
    lost_meanwhile = []

    def slow_reconcile(name: str, **options) -> None:
        time.sleep(5)  # past NODE_LOST_AFTER_SECONDS
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
