"""A restart onto other engine arguments, and a scale-up from none, get the creation's preflight: arguments no
node can hold are refused before the old replicas stop, not found unplaceable after."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from serving import reconcile, services
from serving.choices import UpdateStrategy
from serving.models import Deployment
from tests.serving.conftest import deploy

pytestmark = pytest.mark.django_db


def test_a_restart_onto_arguments_no_node_can_hold_is_refused_and_changes_nothing(owner, deployment, node):
    services.set_update_strategy(actor=owner, deployment=deployment, strategy=UpdateStrategy.REPLACE)
    reconcile.reconcile_deployment(deployment.pk)
    before = Deployment.objects.get(pk=deployment.pk)
    with pytest.raises(Conflict, match="Unschedulable on cpu-pool") as refused:
        services.restart(actor=owner, deployment=deployment, args={"cpu_cores": 64})
    assert refused.value.code == "unschedulable"
    after = Deployment.objects.get(pk=deployment.pk)
    assert (after.engine_args, after.generation, after.replicas) == (
        before.engine_args,
        before.generation,
        before.replicas,
    )


def test_a_restart_may_grow_into_the_room_its_own_replica_frees(owner, team, base_version, pool, node):
    deployment = deploy(owner, team, base_version, pool, args={"cpu_cores": 1})
    reconcile.reconcile_deployment(deployment.pk)  # its replica holds one of the node's two cores
    restarted = services.restart(actor=owner, deployment=deployment, args={"cpu_cores": 2})
    assert restarted.engine_args == {"cpu_cores": 2}


def test_scaling_up_from_none_onto_arguments_no_node_can_hold_is_refused(
    owner, team, base_version, pool, node
):
    stopped = deploy(owner, team, base_version, pool, replicas=0, args={"cpu_cores": 64})
    with pytest.raises(Conflict, match="Unschedulable on cpu-pool"):
        services.scale(actor=owner, deployment=stopped, replicas=1)
    assert Deployment.objects.get(pk=stopped.pk).replicas == 0
