"""Nodes for tests that need capacity without a node agent: a ready node that has just sent its heartbeat."""

from __future__ import annotations

from django.utils import timezone

from serving.choices import NodeState
from serving.models import ComputePool, Node

GIB = 1024**3


def add_node(
    pool: ComputePool, name: str = "cpu-01", *, memory_bytes: int = 24 * GIB, cores: int = 2, **fields
) -> Node:
    return Node.objects.create(
        name=name,
        pool=pool,
        cpu_cores=cores,
        memory_bytes=memory_bytes,
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
        address="127.0.0.1",
        **fields,
    )
