"""A deployment scaled to 0 whose machine dies while its engines stop: the replicas stopping on the lost node are
forgotten (no agent is left to say they stopped), so the deployment stops and can be deleted."""

from __future__ import annotations

import pytest

from serving import reconcile, services
from serving.choices import DeploymentStatus, NodeState, ReplicaState
from serving.models import Deployment, Node, Replica

pytestmark = pytest.mark.django_db


def test_a_deployment_whose_node_died_while_its_replicas_stopped_can_be_deleted(owner, deployment, node):
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=0)
    reconcile.reconcile_deployment(deployment.pk)
    Replica.objects.filter(deployment=deployment).update(state=ReplicaState.STOPPING)  # the agent began
    Node.objects.filter(pk=node.pk).update(state=NodeState.LOST)  # and its machine died meanwhile
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert not Replica.objects.filter(deployment=deployment).exists()
    assert deployment.status == DeploymentStatus.STOPPED
    services.delete_deployment(actor=owner, deployment=deployment)
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
