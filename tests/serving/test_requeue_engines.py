"""A second `portfolio run` on the same data: the replicas of the last run still say ready, but their engines
were stopped with it. `manage.py requeue_engines` (run before the node agent starts) puts them back to
scheduled, so nobody (the gateway, the demo's first prompt) is sent to an engine that is gone, and the agent
starts them again without counting a crash. Real (stand-in) engine processes, started by the agent's code."""

from io import StringIO

import pytest
from django.core.management import call_command

from serving import processes
from serving.choices import ReplicaState
from serving.models import DeploymentEvent, Replica
from tests.serving.test_agent_keys import reconcile_until

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _on_this_machine(settings):
    """keys-node is this machine's node, and its agent stopped with the last run a moment ago: the command
    waits two heartbeats (of a second here) for a beat that does not come (test_requeue_engines_node.py)."""
    settings.NODE_NAME = "keys-node"
    settings.NODE_HEARTBEAT_SECONDS = 1


def requeue(node: str = "keys-node") -> str:
    out = StringIO()
    call_command("requeue_engines", "--node", node, stdout=out)
    return out.getvalue()


def stop_like_portfolio_run(replica: Replica) -> None:
    """What Ctrl-C on `portfolio run` does to this machine's engines: stopped, their rows left as they were."""
    processes.stop(processes.find(replica.pid, replica.pk), grace=5)


def test_a_replica_whose_engine_stopped_with_the_last_run_is_started_again_not_trusted(engines, replica):
    ready = reconcile_until(replica, ReplicaState.READY)
    first_pid = ready.pid
    stop_like_portfolio_run(ready)
    assert "1 replica(s) on keys-node start again" in requeue()
    replica.refresh_from_db()
    assert (replica.state, replica.pid) == (ReplicaState.PENDING, None)
    assert not Replica.objects.filter(state=ReplicaState.READY).exists(), "nobody is routed to it"
    assert DeploymentEvent.objects.filter(replica=replica, kind="requeued").count() == 1

    again = reconcile_until(replica, ReplicaState.READY)
    assert again.pid != first_pid and processes.find(again.pid, again.pk)
    assert again.restarts == 0, "a restart of the machine is not a crash"


def test_an_engine_still_running_is_left_for_the_agent_to_adopt(engines, replica):
    running = reconcile_until(replica, ReplicaState.READY).pid
    assert requeue() == ""
    replica.refresh_from_db()
    assert (replica.state, replica.pid) == (ReplicaState.READY, running)


def test_replicas_of_other_nodes_are_not_touched(engines, replica, settings):
    ready = reconcile_until(replica, ReplicaState.READY)
    stop_like_portfolio_run(ready)
    settings.NODE_NAME = "another-node"
    assert requeue("another-node") == ""
    replica.refresh_from_db()
    assert replica.state == ReplicaState.READY
