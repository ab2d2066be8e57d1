"""The node agent hot-loads a deployment's adapters into its ready replicas, asking each engine (here a stand-in
vLLM, tests/gateway/fake_engine.py, that answers 404 on the load route as vLLM does without runtime LoRA).

A replica of an older generation is being replaced and may run an engine started without LoRA: it is not
asked. A load that keeps failing on a current replica is retried every pass, and said on the timeline once."""

from __future__ import annotations

import sys

import pytest

from serving import agent, prefetch, processes, services
from serving.choices import ReplicaState
from serving.models import Deployment, DeploymentEvent, Replica
from tests.gateway.fake_engine import FakeEngine
from tests.serving.conftest import deploy, make_adapter

pytestmark = pytest.mark.django_db


@pytest.fixture
def serve(settings, tmp_path, monkeypatch, node):
    """Puts a ready replica of a deployment on the node: a live process marked as its engine (what the agent
    looks for), listening where the stand-in vLLM listens."""
    settings.DATA_DIR = tmp_path / "data"
    monkeypatch.setattr(prefetch, "local_copy", lambda version, **_: tmp_path)
    engine = FakeEngine().start()
    started: list[tuple[int, int]] = []

    def serve(deployment: Deployment) -> Replica:
        replica = Replica.objects.create(
            deployment=deployment,
            node=node,
            generation=deployment.generation,
            host=node.address,
            port=engine.port,
            state=ReplicaState.READY,
        )
        argv = [sys.executable, "-c", "import time; time.sleep(300)"]
        replica.pid = processes.start(argv, {}, replica.pk, agent._log_path(replica))
        replica.save(update_fields=["pid"])
        started.append((replica.pid, replica.pk))
        return replica

    yield serve
    for pid, replica_id in started:
        if process := processes.find(pid, replica_id):
            processes.stop(process, grace=1)
    engine.stop()


def _reconcile_three_times(replica: Replica) -> list[str]:
    for _ in range(3):
        agent.reconcile_node(replica.node.name)
    return list(
        DeploymentEvent.objects.filter(replica=replica, kind="adapter_failed").values_list(
            "message", flat=True
        )
    )


def test_a_replica_of_the_generation_being_replaced_is_not_asked_to_load_an_added_adapter(
    org, owner, team, artifact, base_version, deployment, serve
):
    replica = serve(deployment)
    adapter = make_adapter(org, team, artifact, base_version)
    services.add_adapter(
        actor=owner, deployment=deployment, adapter=adapter, name="tone"
    )  # LoRA on: generation 2
    assert _reconcile_three_times(replica) == []
    replica.refresh_from_db()
    assert (replica.state, replica.loaded_adapters) == (ReplicaState.READY, [])


def test_a_load_that_keeps_failing_on_a_current_replica_is_said_once(
    org, owner, team, artifact, base_version, pool, node, serve
):
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    replica = serve(deployment)
    adapter = make_adapter(org, team, artifact, base_version)
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")  # hot-loaded
    failures = _reconcile_three_times(replica)
    assert len(failures) == 1 and failures[0].startswith("Could not load adapter tone: HTTP Error 404")
    replica.refresh_from_db()
    assert replica.loaded_adapters == []
