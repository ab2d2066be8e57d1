"""A rolling change with no room for its surge replica: the deployment says so, and is replaced in place
(one old replica stops, then its successor starts) at a person's word or by its update strategy."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from serving import reconcile, services
from serving.choices import DesiredState, ReplicaState, UpdateStrategy
from serving.models import DeploymentEvent, Replica
from tests.conftest import actor_for
from tests.serving.conftest import audited, live, mark_ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def full(owner, deployment, node):
    """Two ready replicas holding both cores of the only node."""
    services.scale(actor=owner, deployment=deployment, replicas=2)
    reconcile.reconcile_deployment(deployment.pk)
    mark_ready(*live(deployment))
    reconcile.reconcile_deployment(deployment.pk)
    return deployment


def finish_stopping(deployment) -> None:
    """What the node agent does with replicas told to stop."""
    Replica.objects.filter(deployment=deployment, desired=DesiredState.STOPPED).update(
        state=ReplicaState.STOPPED
    )


def test_a_rolling_restart_on_a_full_node_says_there_is_no_room_for_a_surge_replica(owner, full):
    services.restart(actor=owner, deployment=full)
    reconcile.reconcile_deployment(full.pk)
    full.refresh_from_db()
    assert full.status_detail.startswith(reconcile.SURGE_BLOCKED)
    assert "needs" in full.status_detail and "1 core(s)" in full.status_detail
    assert "0 core(s) on cpu-01" in full.status_detail  # what is free
    assert "Replace in place" in full.status_detail
    assert DeploymentEvent.objects.filter(deployment=full, kind="unschedulable").exists()
    assert live(full).count() == 2 and all(r.generation == 1 for r in live(full))  # the old ones serve


def test_replacing_in_place_stops_one_old_replica_then_starts_its_successor_on_its_cores(owner, full):
    services.restart(actor=owner, deployment=full)
    reconcile.reconcile_deployment(full.pk)
    services.replace_in_place(actor=owner, deployment=full)
    assert audited("deployment.replace_in_place", full).after == {"generation": 2, "old_replicas": 2}
    reconcile.reconcile_deployment(full.pk)
    assert live(full).count() == 1  # one old replica stops; nothing new while it holds its core
    (stopped,) = Replica.objects.filter(deployment=full, desired=DesiredState.STOPPED)
    finish_stopping(full)
    reconcile.reconcile_deployment(full.pk)
    (successor,) = live(full).filter(generation=2)
    assert successor.cpu_ids == stopped.cpu_ids
    full.refresh_from_db()
    assert not full.status_detail.startswith("Cannot place")


def test_replacing_in_place_finishes_the_whole_change_and_the_next_one_surges_again(owner, full):
    services.restart(actor=owner, deployment=full)
    services.replace_in_place(actor=owner, deployment=full)
    for _ in range(8):
        reconcile.reconcile_deployment(full.pk)
        finish_stopping(full)
        mark_ready(*live(full))
    reconcile.reconcile_deployment(full.pk)
    assert sorted(r.generation for r in live(full)) == [2, 2]
    services.restart(actor=owner, deployment=full)
    full.refresh_from_db()
    assert reconcile.surges(full)


def test_the_replace_strategy_replaces_in_place_without_being_asked(owner, full):
    services.set_update_strategy(actor=owner, deployment=full, strategy=UpdateStrategy.REPLACE)
    assert audited("deployment.update_strategy", full).after == {"update_strategy": "replace"}
    services.restart(actor=owner, deployment=full)
    reconcile.reconcile_deployment(full.pk)
    full.refresh_from_db()
    assert Replica.objects.filter(deployment=full, desired=DesiredState.STOPPED).count() == 1
    assert not full.status_detail.startswith("Cannot place")


def test_replacing_in_place_with_no_rolling_change_under_way_is_refused(owner, full):
    with pytest.raises(Conflict, match="No rolling change"):
        services.replace_in_place(actor=owner, deployment=full)


def test_replacing_in_place_twice_is_refused(owner, full):
    services.restart(actor=owner, deployment=full)
    services.replace_in_place(actor=owner, deployment=full)
    with pytest.raises(Conflict, match="already"):
        services.replace_in_place(actor=owner, deployment=full)


def test_an_unknown_update_strategy_is_refused(owner, deployment):
    with pytest.raises(Invalid, match="update_strategy"):
        services.set_update_strategy(actor=owner, deployment=deployment, strategy="yolo")


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_a_member_without_deployment_manage_may_not_change_how_it_rolls(org, owner, full, role):
    services.restart(actor=owner, deployment=full)
    member = actor_for(org[role])
    with pytest.raises(Forbidden):
        services.replace_in_place(actor=member, deployment=full)
    with pytest.raises(Forbidden):
        services.set_update_strategy(actor=member, deployment=full, strategy=UpdateStrategy.REPLACE)


def test_an_outsider_does_not_see_the_deployment_to_replace_it(org, owner, full):
    services.restart(actor=owner, deployment=full)
    outsider = actor_for(org["outsider"])
    with pytest.raises(NotFound):
        services.replace_in_place(actor=outsider, deployment=full)
    with pytest.raises(NotFound):
        services.set_update_strategy(actor=outsider, deployment=full, strategy=UpdateStrategy.REPLACE)
