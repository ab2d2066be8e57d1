"""A node's address and capacity, refreshed at every registration, changed with no audit row: a node name
re-registered from another address re-points the gateway's traffic for the replicas started there. Found by
review. A change is audited (``node.update``, before and after); a registration that changes nothing is not."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from serving import agent
from serving.choices import PoolKind
from serving.models import ComputePool

pytestmark = pytest.mark.django_db
CAPACITY = {"cpu_cores": 8, "memory_bytes": 2**34, "gpus": []}


def updates() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="node.update").order_by("sequence"))


def test_a_node_registered_again_from_another_address_is_audited():
    ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)
    agent.register("n1", "cpu-pool", "10.0.0.5", CAPACITY)
    agent.register("n1", "cpu-pool", "198.51.100.77", {**CAPACITY, "cpu_cores": 64})
    [row] = updates()
    assert row.object_repr == "n1" and (row.actor_kind, row.actor_label) == ("system", "system:agent:n1")
    assert row.before == {**CAPACITY, "address": "10.0.0.5"}
    assert row.after == {**CAPACITY, "address": "198.51.100.77", "cpu_cores": 64}


def test_a_beat_that_changes_nothing_writes_no_row():
    ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)
    for _ in range(3):
        agent.register("n1", "cpu-pool", "10.0.0.5", CAPACITY)
    assert updates() == []
    # Without a GPU scan (it failed: the GPUs last seen are kept), nothing changes either.
    agent.register("n1", "cpu-pool", "10.0.0.5", {"cpu_cores": 8, "memory_bytes": 2**34})
    assert updates() == []
