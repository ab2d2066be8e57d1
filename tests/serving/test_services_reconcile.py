"""Serving through its service functions, on real PostgreSQL: reconciles that place, replace and stop
replicas, scaling and restarts, and nodes that drain or go silent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.errors import Conflict, Forbidden
from serving import engine_args, reconcile, scheduler, services
from serving.choices import DeploymentStatus, DesiredState, NodeState, PoolKind, ReplicaState
from serving.models import DeploymentEvent, Node, Replica
from tests.serving.conftest import SMOLLM2_SHAPE, audited, live, mark_ready
from tests.serving.nodes import add_node

pytestmark = pytest.mark.django_db


# --- Reconciling ---------------------------------------------------------------------------------
def test_a_reconcile_schedules_one_pending_replica_reserving_its_estimate(deployment, node):
    touched = reconcile.reconcile_deployment(deployment.pk)
    assert touched == {"cpu-01"}
    (replica,) = Replica.objects.filter(deployment=deployment)
    args = engine_args.validate({}, PoolKind.CPU)
    needed = scheduler.estimate(
        pool_kind=PoolKind.CPU, parameter_count=134_515_008, shape=SMOLLM2_SHAPE, args=args
    )
    assert replica.node == node and replica.host == "127.0.0.1"
    assert replica.state == ReplicaState.PENDING and replica.desired == DesiredState.RUNNING
    assert replica.generation == 1
    assert replica.reserved_memory_bytes == needed.ram_bytes
    assert replica.reserved_cores == 1
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="scheduled", replica=replica).exists()


def test_a_second_reconcile_creates_nothing(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    assert reconcile.reconcile_deployment(deployment.pk) == set()
    assert Replica.objects.filter(deployment=deployment).count() == 1


def test_a_reconcile_of_a_deleted_deployment_does_nothing():
    assert reconcile.reconcile_deployment(987654) == set()


def test_the_deployment_is_running_once_its_replicas_are_ready(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    mark_ready(*Replica.objects.filter(deployment=deployment))
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    assert deployment.status_detail == "1/1 ready"


def test_a_failed_replica_makes_the_deployment_degraded_with_its_reason(deployment):
    reconcile.reconcile_deployment(deployment.pk)
    Replica.objects.filter(deployment=deployment).update(
        state=ReplicaState.FAILED, state_detail="out of memory"
    )
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.DEGRADED
    assert "a replica failed: out of memory" in deployment.status_detail
    assert Replica.objects.filter(deployment=deployment).count() == 1


def test_scaling_up_with_room_schedules_another_replica(owner, deployment):
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    assert live(deployment).count() == 2
    assert audited("deployment.scale", deployment).after["replicas"] == 2


def test_scaling_beyond_the_room_left_says_why_a_replica_cannot_be_placed(owner, deployment):
    services.scale(actor=owner, deployment=deployment, replicas=3)  # the node has 2 cores, a replica takes 1
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert live(deployment).count() == 2
    assert deployment.status_detail.startswith("Cannot place a replica: needs")
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="unschedulable").count() == 1


def test_scaling_to_zero_tells_every_replica_to_stop(owner, deployment):
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=0)
    touched = reconcile.reconcile_deployment(deployment.pk)
    replicas = Replica.objects.filter(deployment=deployment)
    assert replicas.count() == 2
    assert set(replicas.values_list("desired", flat=True)) == {DesiredState.STOPPED}
    assert touched == {"cpu-01"}
    assert audited("deployment.stop", deployment) is not None


def test_replicas_that_stopped_are_forgotten_and_the_deployment_is_stopped(owner, deployment):
    reconcile.reconcile_deployment(deployment.pk)
    services.scale(actor=owner, deployment=deployment, replicas=0)
    reconcile.reconcile_deployment(deployment.pk)
    Replica.objects.filter(deployment=deployment).update(state=ReplicaState.STOPPED)
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert not Replica.objects.filter(deployment=deployment).exists()
    assert deployment.status == DeploymentStatus.STOPPED


def test_a_restart_bumps_the_generation_and_is_audited(owner, deployment):
    services.restart(actor=owner, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.generation == 2
    event = audited("deployment.restart", deployment)
    assert event.before["generation"] == 1 and event.after["generation"] == 2


def test_a_restart_keeps_the_old_replica_until_the_new_one_is_ready(owner, deployment):
    reconcile.reconcile_deployment(deployment.pk)
    old = Replica.objects.get(deployment=deployment)
    mark_ready(old)
    services.restart(actor=owner, deployment=deployment)
    reconcile.reconcile_deployment(deployment.pk)
    new = Replica.objects.get(deployment=deployment, generation=2)
    old.refresh_from_db()
    assert old.desired == DesiredState.RUNNING
    mark_ready(new)
    reconcile.reconcile_deployment(deployment.pk)
    old.refresh_from_db()
    assert old.desired == DesiredState.STOPPED


# --- Nodes -----------------------------------------------------------------------------------------
def test_draining_a_node_is_audited_and_moves_its_replicas_once_replacements_are_ready(
    admin, deployment, pool, node, django_capture_on_commit_callbacks
):
    other = add_node(pool, "cpu-02")
    reconcile.reconcile_deployment(deployment.pk)
    old = Replica.objects.get(deployment=deployment)
    assert old.node == node
    mark_ready(old)
    with django_capture_on_commit_callbacks() as callbacks:
        services.set_node_state(actor=admin, node=node, state=NodeState.DRAINING)
    assert len(callbacks) == 1  # the deployment on the node is reconciled after commit
    event = audited("node.drain", node)
    assert event.before["state"] == NodeState.READY and event.after["state"] == NodeState.DRAINING

    reconcile.reconcile_deployment(deployment.pk)
    new = Replica.objects.exclude(pk=old.pk).get(deployment=deployment)
    assert new.node == other
    old.refresh_from_db()
    assert old.desired == DesiredState.RUNNING  # still serving until the replacement is ready

    mark_ready(new)
    reconcile.reconcile_deployment(deployment.pk)
    old.refresh_from_db()
    assert old.desired == DesiredState.STOPPED


def test_only_a_platform_admin_can_drain_a_node(owner, node):
    with pytest.raises(Forbidden):
        services.set_node_state(actor=owner, node=node, state=NodeState.DRAINING)


def test_a_lost_node_cannot_be_made_ready_by_hand(admin, node):
    Node.objects.filter(pk=node.pk).update(state=NodeState.LOST)
    node.refresh_from_db()
    with pytest.raises(Conflict, match="is lost"):
        services.set_node_state(actor=admin, node=node, state=NodeState.READY)


def test_a_silent_node_is_marked_lost_and_its_replicas_are_replaced_elsewhere(
    deployment, pool, node, settings
):
    other = add_node(pool, "cpu-02")
    reconcile.reconcile_deployment(deployment.pk)
    old = Replica.objects.get(deployment=deployment)
    assert old.node == node
    silent_since = timezone.now() - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS + 5)
    Node.objects.filter(pk=node.pk).update(heartbeat_at=silent_since)

    assert reconcile.mark_lost_nodes() == ["cpu-01"]
    node.refresh_from_db()
    assert node.state == NodeState.LOST
    assert audited("node.lost", node).actor_kind == "system"

    reconcile.reconcile_deployment(deployment.pk)
    (replacement,) = Replica.objects.filter(deployment=deployment)
    assert replacement.pk != old.pk and replacement.node == other
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="replica_lost").exists()


def test_a_node_that_heartbeats_is_not_marked_lost(node):
    assert reconcile.mark_lost_nodes() == []
    node.refresh_from_db()
    assert node.state == NodeState.READY


def test_a_node_lost_since_the_admin_read_it_is_not_made_ready_again(admin, node):
    """The reconcile marked it lost between the page's read and the admin's click: the stale copy said
    ready, and the save put a dead node back in the scheduler's choices."""
    read_before = Node.objects.get(pk=node.pk)
    Node.objects.filter(pk=node.pk).update(state=NodeState.LOST)
    with pytest.raises(Conflict, match="is lost"):
        services.set_node_state(actor=admin, node=read_before, state=NodeState.READY)
    assert Node.objects.get(pk=node.pk).state == NodeState.LOST
