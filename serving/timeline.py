"""A deployment's timeline: one entry per thing that happened to a replica (scheduled, started, ready, crashed,
restarted, adapters loaded), written by the node agent and shown on the deployment's page."""

from __future__ import annotations

from serving.models import DeploymentEvent, Replica


def event(replica: Replica, kind: str, message: str) -> None:
    DeploymentEvent.objects.create(
        deployment_id=replica.deployment_id, replica=replica, kind=kind, message=message
    )
