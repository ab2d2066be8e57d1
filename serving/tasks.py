"""Serving work: the control plane's reconcile (queue "control") and the node agents' (queue "node.<name>")."""

from __future__ import annotations

import logging

from celery import shared_task

from serving import agent, reconcile, replica_meter

logger = logging.getLogger(__name__)


def poke_node(name: str) -> None:
    """Ask a node's agent to reconcile now rather than at its next heartbeat."""
    reconcile_node_task.apply_async(args=[name], queue=f"node.{name}", expires=60)


@shared_task(name="serving.reconcile_all")
def reconcile_all_task() -> None:
    for name in reconcile.reconcile_all():
        poke_node(name)


@shared_task(name="serving.reconcile_deployment")
def reconcile_deployment_task(deployment_id: int) -> None:
    for name in reconcile.reconcile_deployment(deployment_id):
        poke_node(name)


@shared_task(name="serving.reconcile_node")
def reconcile_node_task(name: str) -> None:
    agent.heartbeat(name)


@shared_task(name="serving.meter_replicas")
def meter_replicas() -> tuple[int, int]:
    # Catches what a missed transition left (an agent that died mid-way): see replica_meter.sweep.
    return replica_meter.sweep()


@shared_task(name="serving.step_rollouts")
def step_rollouts() -> dict[str, int]:
    # Each active rollout's canary judged on the usage since it started: promoted, held or rolled back.
    from serving import rollouts

    return rollouts.step_all()
