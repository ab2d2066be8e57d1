"""Embeddings end to end with real processes: a real embedding model (all-MiniLM-L6-v2) imported from a
folder, deployed by a Celery node agent as a vLLM pooling engine on CPU, and called through the gateway
with the official openai SDK; the usage row carries the engine's token count."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from portfolio.accounts.models import Team
from portfolio.registry import services as registry_services
from portfolio.registry.choices import Source, Task, VersionStatus
from portfolio.registry.tasks import import_version
from serving import services
from serving.choices import PoolKind
from serving.models import Node
from tests.conftest import actor_for
from tests.e2e import embedding_model
from tests.e2e.agent import ENGINE_READY_TIMEOUT, NODE, ready_replica, wait

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_an_embedding_model_is_served_through_the_gateway(org, node_agent, settings, tmp_path):
    import openai

    from serving.gateway import services as key_services
    from serving.gateway import usage
    from serving.gateway.models import UsageEvent
    from tests.gateway.process import start_gateway, stop_gateway

    _, agent_log = node_agent
    admin, engineer = actor_for(org["admin"]), actor_for(org["engineer"])
    team = Team.objects.get(slug="support-ai")
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    folder = embedding_model.fetch(
        Path(settings.DATA_DIR) / "cache" / "wheels", settings.IMPORT_ROOTS[0] / "minilm"
    )

    model = registry_services.create_model(
        actor=engineer, name="ticket-embedder", owner_team=team, task=Task.EMBEDDING
    )
    version = registry_services.start_import(
        actor=engineer, model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_detail
    assert version.context_length == 512 and 20_000_000 < version.parameter_count < 25_000_000

    services.create_pool(actor=admin, name="local-cpu", kind=PoolKind.CPU)
    node = wait(
        "the node agent to register", lambda: Node.objects.filter(name=NODE).first(), 120, [agent_log]
    )
    deployment = services.create_deployment(
        actor=engineer,
        name="embedder",
        team=team,
        version=version,
        pool=node.pool,
        args={"max_model_len": 256},
    )
    engine_logs = [agent_log, tmp_path / "node-data" / "engines" / "embedder"]
    wait(
        "the embedding replica to become ready",
        lambda: ready_replica(deployment),
        ENGINE_READY_TIMEOUT,
        engine_logs,
        interval=3,
    )
    services.create_endpoint(
        actor=admin, name="ticket-embeddings", team=team, routes=[{"deployment": "embedder"}]
    )
    _, secret = key_services.create_key(
        actor=admin, team=team, name="e2e embeddings", monthly_token_budget=100_000
    )

    log = tmp_path / "gateway.log"
    gateway, base = start_gateway(log)
    try:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)
        wait(
            "the gateway to route to the endpoint",
            lambda: "ticket-embeddings" in {m.id for m in sdk.models.list()},
            30,
            [log],
        )
        texts = [
            "I was charged twice for my order",
            "There is a double charge on my card",
            "The app crashes on start",
        ]
        answer = sdk.embeddings.create(model="ticket-embeddings", input=texts)
        assert answer.model == "ticket-embeddings"
        vectors = [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
        assert [len(v) for v in vectors] == [384, 384, 384]
        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2, (
            "a real model, not noise"
        )
        time.sleep(1)
        wait("the usage event", lambda: usage.flush() == 0 and UsageEvent.objects.exists(), 30, [log])
        event = UsageEvent.objects.get()
        assert (event.kind, event.endpoint, event.status) == ("embedding", "ticket-embeddings", 200)
        assert (event.input_tokens, event.output_tokens) == (answer.usage.prompt_tokens, 0)
        assert event.input_tokens > 0
    finally:
        stop_gateway(gateway)
