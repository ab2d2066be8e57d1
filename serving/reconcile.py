"""The control plane's reconcile: nodes that went silent become lost, and every deployment's replicas are
scheduled, replaced or stopped according to ``planning.plan``. Runs on the control queue (beat, and on
commit after each change); idempotent, one deployment at a time under a row lock."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Q

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from serving import engine_args, heartbeats, planning, replica_meter, scheduler
from serving.capacity import pool_capacity
from serving.choices import DeploymentStatus, DesiredState, NodeState, ReplicaState, UpdateStrategy
from serving.models import ComputePool, Deployment, DeploymentEvent, Node, Replica

logger = logging.getLogger(__name__)


# States an operator sets on a node, kept through a silence (``Node.state_before_lost``).
OPERATOR_STATES = (NodeState.CORDONED, NodeState.DRAINING)


def mark_lost_nodes() -> list[str]:
    lost = []
    silent = Q(heartbeat_at__lt=heartbeats.silent_before()) | Q(heartbeat_at__isnull=True)
    for node in Node.objects.exclude(state=NodeState.LOST).filter(silent):
        with transaction.atomic():
            updated = (
                Node.objects.filter(silent, pk=node.pk)
                .exclude(state=NodeState.LOST)
                .update(
                    state=NodeState.LOST,
                    state_before_lost=node.state if node.state in OPERATOR_STATES else "",
                )
            )
            if updated:
                node.refresh_from_db()
                replica_meter.node_lost(node.pk, node.heartbeat_at)
                audit.record(Actor.for_system("reconcile"), "node.lost", node, after=node.snapshot())
                lost.append(node.name)
    return lost


# How the status of a deployment begins when a rolling change cannot place its surge replica.
SURGE_BLOCKED = "Cannot place a surge replica"


def surges(deployment: Deployment) -> bool:
    """Whether the deployment's rolling change starts a new replica before stopping an old one."""
    return (
        deployment.update_strategy == UpdateStrategy.SURGE
        and deployment.in_place_generation != deployment.generation
    )


def adapter_parameters(deployment: Deployment) -> tuple[int, ...]:
    """The parameters of each adapter attached to the deployment (what ``scheduler.estimate`` takes)."""
    return tuple(a.version.parameter_count or 0 for a in deployment.adapters.select_related("version"))


def reconcile_deployment(deployment_id: int) -> set[str]:
    """Bring one deployment's replicas toward its desired state; return the nodes to poke."""
    touched: set[str] = set()
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update(of=("self",))
            .select_related("version", "pool")
            .filter(pk=deployment_id)
            .first()
        )
        if deployment is None:
            return touched
        replicas = list(deployment.replica_set.select_related("node"))
        views = [
            planning.ReplicaView(r.pk, r.generation, r.state, r.desired, r.node.state if r.node else None)
            for r in replicas
        ]
        plan = planning.plan(deployment.replicas, deployment.generation, views, surge=surges(deployment))
        by_id = {r.pk: r for r in replicas}
        for replica_id in plan.forget:
            replica = by_id[replica_id]
            if replica.state != ReplicaState.STOPPED:
                DeploymentEvent.objects.create(
                    deployment=deployment,
                    kind="replica_lost",
                    message=(
                        f"Replica #{replica_id} lost with its node; replacing it."
                        if replica.desired == DesiredState.RUNNING
                        else f"Replica #{replica_id} lost with its node while it stopped."
                    ),
                )
            replica_meter.stopped(replica_id)
            Replica.objects.filter(pk=replica_id).delete()
        for replica_id in plan.stop:
            replica = by_id[replica_id]
            Replica.objects.filter(pk=replica_id).update(desired=DesiredState.STOPPED)
            if replica.node:
                touched.add(replica.node.name)
        detail = ""
        if plan.start:
            args = engine_args.for_deployment(deployment)
            estimate = scheduler.estimate(
                pool_kind=deployment.pool.kind,
                parameter_count=deployment.version.parameter_count or 0,
                shape=deployment.version.shape,
                args=args,
                adapters=adapter_parameters(deployment),
                facts=deployment.version.architecture_facts,
            )
            # Placements in a pool take turns: never two replicas on one core (CPU) or GPU; fine-tune jobs claim
            # GPUs under the same lock (training.finetune).
            ComputePool.objects.select_for_update().filter(pk=deployment.pool_id).first()
            for _ in range(plan.start):
                used_nodes = {r.node.name for r in replicas if r.node and r.desired == DesiredState.RUNNING}
                try:
                    placement = scheduler.place(
                        estimate,
                        pool_capacity(deployment.pool),
                        pool_kind=deployment.pool.kind,
                        args=args,
                        avoid=used_nodes,
                    )
                except scheduler.Unschedulable as exc:
                    detail = (
                        f"{SURGE_BLOCKED}: {exc} The old replicas keep serving. Replace in place (stop one old "
                        "replica, then start its successor) or free room in the pool."
                        if plan.surging
                        else f"Cannot place a replica: {exc}"
                    )
                    break
                node = Node.objects.get(pool=deployment.pool, name=placement.node)
                replica = Replica.objects.create(
                    deployment=deployment,
                    node=node,
                    generation=deployment.generation,
                    host=node.address,
                    gpu_indices=placement.gpu_indices,
                    reserved_memory_bytes=placement.reserved_memory_bytes,
                    reserved_cores=placement.reserved_cores,
                    cpu_ids=list(placement.cpu_ids),
                    kv_cache_bytes=placement.kv_cache_bytes,
                )
                replicas.append(replica)
                DeploymentEvent.objects.create(
                    deployment=deployment,
                    replica=replica,
                    kind="scheduled",
                    message=f"Replica #{replica.pk} scheduled on {node.name}"
                    + (f", cores {scheduler.cpu_list(placement.cpu_ids)}." if placement.cpu_ids else "."),
                )
                touched.add(node.name)
        status = plan.status
        if detail and status == DeploymentStatus.RUNNING:
            status = DeploymentStatus.DEGRADED
        if not detail:
            detail = _describe(deployment, status)
        if (deployment.status, deployment.status_detail) != (status, detail):
            if detail != deployment.status_detail and detail.startswith("Cannot place"):
                DeploymentEvent.objects.create(deployment=deployment, kind="unschedulable", message=detail)
            deployment.status, deployment.status_detail = status, detail
            deployment.save(update_fields=["status", "status_detail"])
    return touched


def _describe(deployment: Deployment, status: str) -> str:
    counts: dict[str, int] = {}
    for state in deployment.replica_set.filter(generation=deployment.generation).values_list(
        "state", flat=True
    ):
        counts[state] = counts.get(state, 0) + 1
    ready = counts.get(ReplicaState.READY, 0)
    if status == DeploymentStatus.DEGRADED:
        failed = deployment.replica_set.filter(state=ReplicaState.FAILED).first()
        return (
            f"{ready}/{deployment.replicas} ready; a replica failed: {failed.state_detail if failed else ''}"
        )
    if status == DeploymentStatus.STOPPED:
        return "Stopped."
    return f"{ready}/{deployment.replicas} ready"


def reconcile_all() -> set[str]:
    mark_lost_nodes()
    touched: set[str] = set()
    for deployment_id in Deployment.objects.values_list("pk", flat=True):
        try:
            touched |= reconcile_deployment(deployment_id)
        except Exception:
            logger.exception("reconciling deployment %s failed", deployment_id)
    return touched
