"""An agent restarted (a worker upgrade: stopped with a grace, started again) is silent for a while: its node
is not lost meanwhile, so its replicas are kept for the agent to re-adopt their engines. Found by review: the
lost window was three heartbeats (15 s), and a 20-second restart had every replica of the node forgotten, its
engines stopped as orphans when the agent returned and each model loaded again from scratch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now

from serving import reconcile
from serving.choices import NodeState
from serving.models import Node, Replica
from tests.serving.conftest import mark_ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def serving(deployment, node):
    reconcile.reconcile_deployment(deployment.pk)
    replica = Replica.objects.get(deployment=deployment)
    mark_ready(replica)
    return replica


def silent_for(node: Node, seconds: int) -> None:
    Node.objects.filter(pk=node.pk).update(heartbeat_at=Now() - timedelta(seconds=seconds))


def test_a_node_whose_agent_restarts_for_20_seconds_keeps_its_replicas(serving, node):
    silent_for(node, 20)
    reconcile.reconcile_all()
    node.refresh_from_db()
    assert node.state != NodeState.LOST
    assert Replica.objects.filter(pk=serving.pk).exists(), "its engines would be stopped as orphans"


def test_a_node_silent_past_the_lost_window_still_has_its_replicas_placed_again(serving, node, settings):
    silent_for(node, settings.NODE_LOST_AFTER_SECONDS + 5)
    reconcile.reconcile_all()
    node.refresh_from_db()
    assert node.state == NodeState.LOST and not Replica.objects.filter(pk=serving.pk).exists()
