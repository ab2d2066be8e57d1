"""Free capacity of a pool's nodes, from what the database says is reserved on them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from serving.choices import ReplicaState
from serving.models import ComputePool, Node, Replica
from serving.scheduler import GpuFree, NodeFree, cpu_list


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
    return nodes_capacity(
        list(pool.nodes.all()), exclude_replica_ids=exclude_replica_ids, exclude_holders=exclude_holders
    )


def nodes_capacity(
    nodes: list[Node], *, exclude_replica_ids: set[int] | None = None, exclude_holders: set[str] | None = None
) -> list[NodeFree]:
    """Free capacity of nodes already loaded (of one pool or many), in their order: one read of their active
    replicas and one per GPU holder, whatever the number of pools (what a node has free is its own)."""
    reserved_ram: dict[int, int] = defaultdict(int)
    reserved_cores: dict[int, int] = defaultdict(int)
    reserved_gpu: dict[tuple[int, int], int] = defaultdict(int)
    held_cores: dict[int, set[int]] = defaultdict(set)
    replicas = Replica.objects.filter(node__in=nodes, state__in=ReplicaState.active()).values(
        "id", "node_id", "gpu_indices", "reserved_memory_bytes", "reserved_cores", "cpu_ids"
    )
    for replica in replicas:
        if exclude_replica_ids and replica["id"] in exclude_replica_ids:
            continue
        # Replicas placed before cores were pinned hold a count only (their engines bind where vLLM chooses).
        held_cores[replica["node_id"]].update(replica["cpu_ids"] or ())
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
            free_core_ids=[i for i in range(node.cpu_cores) if i not in held_cores[node.pk]],
        )
        for node in nodes
    ]


@dataclass(frozen=True)
class CoreHold:
    """Cores of a node pinned to one replica, for the pools page."""

    cores: str  # "0-1"
    replica_id: int
    deployment: str
    deployment_id: int


def core_holds(nodes: Iterable[Node]) -> dict[int, list[CoreHold]]:
    """Which active replica holds which cores, by node id (replicas without pinned cores are left out)."""
    holds: dict[int, list[CoreHold]] = defaultdict(list)
    replicas = (
        Replica.objects.filter(node__in=list(nodes), state__in=ReplicaState.active())
        .exclude(cpu_ids=[])
        .values_list("node_id", "id", "cpu_ids", "deployment__name", "deployment_id")
    )
    for node_id, replica_id, cpu_ids, name, deployment_id in sorted(replicas, key=lambda r: min(r[2])):
        holds[node_id].append(CoreHold(cpu_list(cpu_ids), replica_id, name, deployment_id))
    return holds


def node_usage(node: Node) -> dict:
    """Reserved vs total for the capacity bars of the pools page."""
    return nodes_usage([node])[node.pk]


def pool_usage(pool: ComputePool) -> dict[str, dict]:
    """``node_usage`` for every node of a pool from one capacity read: node name -> usage."""
    nodes = list(pool.nodes.all())
    usage = nodes_usage(nodes)
    return {node.name: usage[node.pk] for node in nodes}


def nodes_usage(nodes: list[Node]) -> dict[int, dict]:
    """``node_usage`` for nodes already loaded, of any number of pools, from one capacity read: node id ->
    usage (a page of pools or of nodes costs the same queries for any number of them)."""
    return {node.pk: _usage(node, free) for node, free in zip(nodes, nodes_capacity(nodes), strict=True)}


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
