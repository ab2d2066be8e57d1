"""`requeue_engines --node` looks for engines among this machine's processes, so it acts on this machine's
node only. Run from the web container for a GPU machine's node, every ready replica of it looked gone: it was
put back to scheduled without its pid, left the routing table, and the GPU machine's agent then killed the live
engines nobody recorded and started new ones (found by review). Another machine's node is refused; and while an
agent of the node still heartbeats (the same name on another machine), nothing is requeued."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from serving.choices import ReplicaState
from serving.management.commands import requeue_engines
from serving.models import DeploymentEvent, Node, Replica

pytestmark = pytest.mark.django_db
GONE = 2**22 + 12345  # above any pid this test machine hands out: no process has it


def ready_with_a_pid(replica: Replica, heartbeat_ago: timedelta = timedelta(hours=1)) -> Replica:
    Replica.objects.filter(pk=replica.pk).update(state=ReplicaState.READY, pid=GONE, port=8100)
    Node.objects.filter(name="keys-node").update(heartbeat_at=timezone.now() - heartbeat_ago)
    replica.refresh_from_db()
    return replica


def requeue(node: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("requeue_engines", "--node", node, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_another_machines_node_is_refused_and_its_replicas_are_left_as_they_are(replica, settings):
    settings.NODE_NAME = "web-container"
    ready = ready_with_a_pid(replica)
    with pytest.raises(CommandError, match="keys-node is not this machine's node"):
        requeue("keys-node")
    replica.refresh_from_db()
    assert (replica.state, replica.pid) == (ReplicaState.READY, ready.pid)
    assert not DeploymentEvent.objects.filter(replica=replica, kind="requeued").exists()


def test_this_machines_node_with_its_engine_gone_is_requeued_as_before(replica, settings):
    settings.NODE_NAME = "keys-node"
    ready_with_a_pid(replica)
    out, _ = requeue("keys-node")
    assert "1 replica(s) on keys-node start again" in out
    replica.refresh_from_db()
    assert (replica.state, replica.pid) == (ReplicaState.PENDING, None)


def test_nothing_is_requeued_while_an_agent_of_the_node_still_heartbeats(replica, settings, monkeypatch):
    """The same node name on another machine: its agent's beats go on while this command waits two beats."""
    settings.NODE_NAME = "keys-node"
    ready = ready_with_a_pid(replica, heartbeat_ago=timedelta(seconds=1))
    waited = []

    def the_other_agent_beats(seconds: float) -> None:
        waited.append(seconds)
        Node.objects.filter(name="keys-node").update(heartbeat_at=timezone.now() + timedelta(seconds=5))

    monkeypatch.setattr(requeue_engines, "sleep", the_other_agent_beats)
    out, err = requeue("keys-node")
    assert out == "" and "An agent of node keys-node heartbeats" in err
    assert len(waited) == 1, "for the beat due next, once"
    replica.refresh_from_db()
    assert (replica.state, replica.pid) == (ReplicaState.READY, ready.pid)


def test_a_beat_left_by_this_machines_last_run_moments_ago_does_not_stop_the_requeue(
    replica, settings, monkeypatch
):
    settings.NODE_NAME = "keys-node"
    ready_with_a_pid(replica, heartbeat_ago=timedelta(seconds=1))
    monkeypatch.setattr(requeue_engines, "sleep", lambda seconds: None)  # no beat comes
    out, _ = requeue("keys-node")
    assert "1 replica(s) on keys-node start again" in out
    replica.refresh_from_db()
    assert (replica.state, replica.pid) == (ReplicaState.PENDING, None)
