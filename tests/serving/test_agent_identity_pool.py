"""A node is found by its name alone. An agent configured for another pool than the node's recorded one (a
copied NODE_NAME, a mistyped NODE_POOL, another machine under the same name) took the node over: the node stayed
in its pool but took this machine's address and capacity, its beat was refreshed from here, and its replicas were
reconciled, their engines started, on this machine. Such an agent is refused: it says so in its log, and leaves
the node's row and its engines alone."""

from __future__ import annotations

import logging

import pytest

from serving import agent, agent_lock
from serving.choices import PoolKind
from serving.models import ComputePool, Node

pytestmark = pytest.mark.django_db
GPU_CAPACITY = {
    "cpu_cores": 64,
    "memory_bytes": 2**40,
    "gpus": [{"index": 0, "name": "H100", "memory_bytes": 1}],
}


def _row(name: str) -> tuple:
    node = Node.objects.select_related("pool").get(name=name)
    return node.pool.name, node.address, node.cpu_cores, node.memory_bytes, node.gpus, node.heartbeat_at


def test_an_agent_of_another_pool_does_not_take_over_the_node(replica, caplog):
    ComputePool.objects.create(name="gpu-pool", kind=PoolKind.GPU)
    before = _row("keys-node")
    with caplog.at_level(logging.ERROR, logger=agent.__name__):
        assert agent.register("keys-node", "gpu-pool", "10.0.0.99", GPU_CAPACITY) is None
    assert _row("keys-node") == before
    assert "node keys-node is recorded in pool 'cpu-pool'" in caplog.text
    assert "configured for pool 'gpu-pool'" in caplog.text


def test_its_heartbeat_neither_beats_nor_reconciles_the_node(replica, settings, monkeypatch, caplog):
    ComputePool.objects.create(name="gpu-pool", kind=PoolKind.GPU)
    settings.NODE_POOL, settings.NODE_ADDRESS = "gpu-pool", "10.0.0.99"
    monkeypatch.setattr(agent, "detect_capacity", lambda: dict(GPU_CAPACITY))
    reconciled, locked = [], []
    monkeypatch.setattr(agent, "reconcile_node", lambda name, **options: reconciled.append(name))
    monkeypatch.setattr(agent_lock, "acquire_node_lock", lambda name: locked.append(name))
    before = _row("keys-node")
    for _ in range(2):  # retried at every beat, without raising out of the agent's loop
        assert agent.heartbeat("keys-node") is False
    assert (reconciled, locked) == ([], [])
    assert _row("keys-node") == before
    assert caplog.text.count("not registered, nothing reconciled") == 2


def test_the_agent_of_the_nodes_own_pool_still_registers_it(replica, settings):
    settings.NODE_ADDRESS = "10.0.0.7"
    node = agent.register("keys-node", "cpu-pool", settings.NODE_ADDRESS, {"cpu_cores": 8})
    assert node is not None
    assert _row("keys-node")[:3] == ("cpu-pool", "10.0.0.7", 8)
