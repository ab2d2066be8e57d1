"""Serving speed in eval runs: latency (p50) and tokens per second measured on the replica that serves the
version, against a real HTTP server standing in for a vLLM replica (tests/gateway/fake_engine.py, which
checks the engine key and answers with OpenAI usage). Real vLLM is timed in tests/e2e/test_serving.py."""

from __future__ import annotations

import pytest

from portfolio.registry.choices import VersionKind
from portfolio.registry.models import Artifact, Model, ModelVersion
from serving.agent import engine_key
from serving.choices import DesiredState, PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, DeploymentAdapter, Replica
from tests.gateway.fake_engine import FakeEngine
from tests.serving.conftest import hold_adapters
from tests.serving.nodes import add_node
from tests.training.conftest import tickets
from training.serving_speed import serving_speed

pytestmark = pytest.mark.django_db


class UnevenEngine(FakeEngine):
    """Answers its requests after the given delays in turn: a slow outlier must not move the median."""

    def __init__(self, key: str, delays: list[float]):
        super().__init__(key)
        self.delays = iter(delays)

    async def generate(self, request):
        self.delay = next(self.delays)
        return await super().generate(request)


@pytest.fixture
def serving(team):
    """A base version and an adapter of it, deployed on a pool with one replica; engines started by tests."""
    artifact = Artifact.objects.create(
        id="f" * 64, store_uri="file:///x", size_bytes=1, file_count=0, files=[]
    )
    model = Model.objects.create(name="smol", owner_team=team)
    base = ModelVersion.objects.create(
        model=model, number=1, source="local", artifact=artifact, status="ready"
    )
    adapter = ModelVersion.objects.create(
        model=model,
        number=2,
        kind=VersionKind.ADAPTER,
        base_version=base,
        source="fine_tune",
        artifact=artifact,
        status="ready",
    )
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    node = add_node(pool, "n1", memory_bytes=2**34)
    deployment = Deployment.objects.create(name="smol-dep", owner_team=team, version=base, pool=pool)
    replica = Replica.objects.create(
        deployment=deployment, node=node, generation=1, state=ReplicaState.READY, host="127.0.0.1"
    )
    engines: list[FakeEngine] = []

    def engine(engine: FakeEngine) -> FakeEngine:
        engines.append(engine.start())
        Replica.objects.filter(pk=replica.pk).update(port=engine.port)
        return engine

    yield {"base": base, "adapter": adapter, "deployment": deployment, "replica": replica, "engine": engine,
           "team": team, "pool": pool, "node": node}  # fmt: skip
    for started in engines:
        started.stop()


def test_a_deployed_version_is_timed_on_its_replica_one_request_at_a_time(serving):
    replica = serving["replica"]
    # One warm-up request, then eight measured ones: the median is 50 ms whatever the two 1 s outliers
    # (the mean would be 290 ms).
    delays = [0.0, 0.05, 1.0, 0.05, 0.05, 0.05, 1.0, 0.05, 0.05]
    engine = serving["engine"](UnevenEngine(engine_key(replica.pk), delays))
    rows = tickets(5)
    measured = serving_speed(serving["base"], rows, serving["team"])

    assert measured["deployed"] is True
    assert (measured["replica"], measured["deployment"], measured["node"], measured["model"]) == (
        replica.pk,
        "smol-dep",
        "n1",
        "smol-dep",
    )
    # Eight requests from five rows: the prompts again from the first.
    assert measured["requests"] == 8 and len(engine.requests) == 9
    assert 50 <= measured["latency_p50_ms"] < 200, measured
    assert measured["latency_max_ms"] >= 1000, measured
    # The stand-in generates max_tokens tokens per answer: 16 x 8 over at least 2.3 s of waiting.
    assert measured["completion_tokens"] == 128
    assert 0 < measured["tokens_per_second"] <= 128 / 2.3, measured
    sent = engine.requests[5]  # the fifth measured request, after the warm-up
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("smol-dep", 16, 0)
    assert sent["messages"] == rows[4]["messages"][:-1], "the prompt only, never the expected answer"
    assert engine.requests[6]["messages"] == rows[0]["messages"][:-1]


def test_an_adapter_is_timed_under_its_own_name_once_its_replica_has_loaded_it(serving):
    replica = serving["replica"]
    engine = serving["engine"](FakeEngine(engine_key(replica.pk)))
    DeploymentAdapter.objects.create(
        deployment=serving["deployment"], version=serving["adapter"], name="smol-ft"
    )
    not_loaded = serving_speed(serving["adapter"], tickets(3), serving["team"])
    assert not_loaded["deployed"] is False and "latency_p50_ms" not in not_loaded
    assert not engine.requests

    Replica.objects.filter(pk=replica.pk).update(
        loaded_adapters=["smol-ft"], adapter_versions={"smol-ft": serving["adapter"].pk + 1000}
    )
    another = serving_speed(serving["adapter"], tickets(3), serving["team"])
    assert another["deployed"] is False, "the name held at another version is not this one"
    assert not engine.requests

    hold_adapters(Replica.objects.filter(pk=replica.pk), "smol-ft")
    measured = serving_speed(serving["adapter"], tickets(3), serving["team"])
    assert measured["deployed"] is True and measured["model"] == "smol-ft" and measured["requests"] == 8
    assert {request["model"] for request in engine.requests} == {"smol-ft"}


def test_a_version_without_a_ready_replica_says_so_and_gets_no_figures(serving):
    engine = serving["engine"](FakeEngine(engine_key(serving["replica"].pk)))
    Replica.objects.filter(pk=serving["replica"].pk).update(state=ReplicaState.STARTING)
    measured = serving_speed(serving["base"], tickets(3), serving["team"])
    assert measured == {
        "deployed": False,
        "note": f"smol:v1 was not deployed by {serving['team'].name} (no ready replica) when evaluated.",
    }
    assert not engine.requests


def test_a_replica_being_drained_is_not_timed(serving):
    """A replica to stop is out of the gateways' tables while its agent drains it (serving/draining.py):
    timing the job's rows on it measured an engine about to go, and added work to its drain."""
    engine = serving["engine"](FakeEngine(engine_key(serving["replica"].pk)))
    Replica.objects.filter(pk=serving["replica"].pk).update(desired=DesiredState.STOPPED)
    measured = serving_speed(serving["base"], tickets(3), serving["team"])
    assert measured["deployed"] is False and "no ready replica" in measured["note"]
    assert not engine.requests


def test_a_replica_that_refuses_the_call_gives_the_reason_and_no_figures(serving):
    serving["engine"](FakeEngine("the key of another replica"))
    measured = serving_speed(serving["base"], tickets(3), serving["team"])
    assert measured["deployed"] is True and "401" in measured["error"]
    assert not {"latency_p50_ms", "tokens_per_second"} & set(measured)


def test_another_teams_replica_of_the_version_is_neither_sent_the_rows_nor_named(serving, other_team):
    """The model is shared, and another team deploys the same version: the job's held-out rows would go
    straight to that team's engine, unmetered, and its deployment's name into the job's figures."""
    replica = serving["replica"]
    Deployment.objects.filter(pk=serving["deployment"].pk).update(owner_team=other_team)
    engine = serving["engine"](FakeEngine(engine_key(replica.pk)))

    measured = serving_speed(serving["base"], tickets(3), serving["team"])

    assert measured["deployed"] is False and "smol-dep" not in str(measured)
    assert not engine.requests
    # The team's own deployment of it is timed.
    own = Deployment.objects.create(name="own-dep", owner_team=serving["team"], version=serving["base"],
                                    pool=serving["pool"])  # fmt: skip
    Replica.objects.filter(pk=replica.pk).update(deployment=own)
    assert serving_speed(serving["base"], tickets(3), serving["team"])["deployment"] == "own-dep"
