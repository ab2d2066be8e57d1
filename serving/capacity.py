"""Free capacity of a pool's nodes, from what the database says is reserved on them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from serving.choices import ReplicaState
from serving.models import ComputePool, Node, Replica
from serving.scheduler import GpuFree, NodeFree


@dataclass(frozen=True)
class GpuHold:
    """A whole GPU held by something other than a replica (a training job): none of it is free for one."""

    holder: str  # who holds it ("fine-tune #12"): a holder being moved leaves its own holds out
    node_id: int
    index: int


# Other apps register what holds GPUs whole (training: its queued and running jobs): given a pool's nodes,
# each returns the holds on them.
GPU_HOLDERS: list[Callable[[list[Node]], Iterable[GpuHold]]] = []


def pool_capacity(
    pool: ComputePool, *, exclude_replica_ids: set[int] | None = None, exclude_holders: set[str] | None = None
) -> list[NodeFree]:
    nodes = list(pool.nodes.all())
    reserved_ram: dict[int, int] = defaultdict(int)
    reserved_cores: dict[int, int] = defaultdict(int)
    reserved_gpu: dict[tuple[int, int], int] = defaultdict(int)
    replicas = Replica.objects.filter(node__in=nodes, state__in=ReplicaState.active()).values(
        "id", "node_id", "gpu_indices", "reserved_memory_bytes", "reserved_cores"
    )
    for replica in replicas:
        if exclude_replica_ids and replica["id"] in exclude_replica_ids:
            continue
        if replica["gpu_indices"]:
            for index in replica["gpu_indices"]:
                reserved_gpu[(replica["node_id"], index)] += replica["reserved_memory_bytes"]
        else:
            reserved_ram[replica["node_id"]] += replica["reserved_memory_bytes"]
        reserved_cores[replica["node_id"]] += replica["reserved_cores"]
    held = (
        {
            (hold.node_id, hold.index)
            for holds in GPU_HOLDERS
            for hold in holds(nodes)
            if hold.holder not in (exclude_holders or ())
        }
        if any(node.gpus for node in nodes)
        else set()
    )
    return [
        NodeFree(
            name=node.name,
            state=node.state,
            ram_free=node.memory_bytes - reserved_ram[node.pk],
            cores_free=node.cpu_cores - reserved_cores[node.pk],
            gpus=[
                GpuFree(
                    g["index"],
                    g.get("name", ""),
                    g["memory_bytes"],
                    0
                    if (node.pk, g["index"]) in held
                    else g["memory_bytes"] - reserved_gpu[(node.pk, g["index"])],
                )
                for g in node.gpus
            ],
        )
        for node in nodes
    ]


def node_usage(node: Node) -> dict:
    """Reserved vs total for the capacity bars of the pools page."""
    free = next(n for n in pool_capacity(node.pool) if n.name == node.name)
    return _usage(node, free)


def pool_usage(pool: ComputePool) -> dict[str, dict]:
    """``node_usage`` for every node of a pool from one capacity read: node name -> usage."""
    nodes = {node.name: node for node in pool.nodes.all()}
    return {free.name: _usage(nodes[free.name], free) for free in pool_capacity(pool)}


def _usage(node: Node, free: NodeFree) -> dict:
    return {
        "ram_used": node.memory_bytes - free.ram_free,
        "ram_total": node.memory_bytes,
        "cores_used": node.cpu_cores - free.cores_free,
        "cores_total": node.cpu_cores,
        "gpus": [
            {"index": g.index, "name": g.name, "used": g.total_bytes - g.free_bytes, "total": g.total_bytes}
            for g in free.gpus
        ],
    }
