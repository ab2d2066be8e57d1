"""After `portfolio run` was stopped, its engines were gone but their replicas still said ready, with their
compute runs open. `requeue_engines` ends those runs at the node's last heartbeat, the last time the engines
were seen running: the downtime is not billed."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from portfolio.billing.models import ComputeInterval
from serving import replica_meter
from serving.choices import ReplicaState
from serving.models import Node, Replica

pytestmark = pytest.mark.django_db


def test_a_requeued_replicas_run_ends_at_its_nodes_last_heartbeat_not_now(replica, settings):
    settings.NODE_NAME = "keys-node"  # this machine's node: the only one whose engines it can look for
    Replica.objects.filter(pk=replica.pk).update(
        state=ReplicaState.READY, pid=None, started_at=timezone.now() - timedelta(hours=3)
    )
    replica.refresh_from_db()
    replica_meter.started(replica)
    last_heartbeat = timezone.now() - timedelta(hours=2)  # `portfolio run` stopped then
    Node.objects.filter(pk=replica.node_id).update(heartbeat_at=last_heartbeat)

    call_command("requeue_engines", "--node", "keys-node", stdout=StringIO())
    run = ComputeInterval.objects.get(key=replica_meter.key(replica))
    assert run.ended_at == last_heartbeat
