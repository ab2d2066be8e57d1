"""Free capacity counts what replicas reserve and what the registered GPU holders (training's jobs) hold."""

from __future__ import annotations

import pytest
from django.utils import timezone

from serving import capacity
from serving.capacity import GpuHold, pool_capacity, pool_usage
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Node

pytestmark = pytest.mark.django_db
GIB = 1024**3


@pytest.fixture
def node() -> Node:
    pool = ComputePool.objects.create(name="gpu", kind=PoolKind.GPU)
    return Node.objects.create(
        name="gpu-01",
        pool=pool,
        address="10.0.0.5",
        cpu_cores=16,
        memory_bytes=128 * GIB,
        gpus=[{"index": i, "name": "NVIDIA L4", "memory_bytes": 24 * GIB} for i in range(2)],
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
    )


@pytest.fixture
def holders(monkeypatch) -> list:
    registered: list = []
    monkeypatch.setattr(capacity, "GPU_HOLDERS", registered)
    return registered


def test_a_gpu_a_registered_holder_holds_has_nothing_free_and_shows_as_used(node, holders):
    holders.append(lambda nodes: [GpuHold("job 7", nodes[0].pk, 1)])
    free = {gpu.index: gpu.free_bytes for gpu in pool_capacity(node.pool)[0].gpus}
    assert free == {0: 24 * GIB, 1: 0}
    assert [gpu["used"] for gpu in pool_usage(node.pool)["gpu-01"]["gpus"]] == [0, 24 * GIB]


def test_a_holder_left_out_by_name_frees_its_gpus_for_its_own_move(node, holders):
    holders.append(lambda nodes: [GpuHold("job 7", node.pk, 0), GpuHold("job 8", node.pk, 1)])
    free = {gpu.index: gpu.free_bytes for gpu in pool_capacity(node.pool, exclude_holders={"job 7"})[0].gpus}
    assert free == {0: 24 * GIB, 1: 0}


def test_holders_are_not_asked_about_a_pool_without_gpus(holders):
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    Node.objects.create(
        name="cpu-01",
        pool=pool,
        address="10.0.0.6",
        cpu_cores=8,
        memory_bytes=32 * GIB,
        state=NodeState.READY,
    )
    holders.append(lambda nodes: pytest.fail("asked about GPUs of a pool that has none"))
    assert pool_capacity(pool)[0].gpus == []


def test_training_registers_its_jobs_as_gpu_holders():
    from training.finetune import gpu_holds

    assert capacity.GPU_HOLDERS.count(gpu_holds) == 1
