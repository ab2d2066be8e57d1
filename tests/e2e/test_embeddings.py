"""Embeddings end to end with real processes: a real embedding model (all-MiniLM-L6-v2) imported from a
folder, deployed by a Celery node agent as a vLLM pooling engine on CPU, and called through the gateway
with the official openai SDK (the platform's path of ``platform_path``); the usage row carries the engine's
token count."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from portfolio.accounts.models import Team
from portfolio.registry.choices import Task
from tests.conftest import actor_for
from tests.e2e import embedding_model, platform_path
from tests.e2e.agent import wait

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_an_embedding_model_is_served_through_the_gateway(org, node_agent, settings, tmp_path):
    from serving.gateway import usage
    from serving.gateway.models import UsageEvent

    _, agent_log = node_agent
    team = Team.objects.get(slug="support-ai")
    root = platform_path.import_root(settings, tmp_path)
    folder = embedding_model.fetch(Path(settings.DATA_DIR) / "cache" / "wheels", root / "minilm")
    version = platform_path.import_folder(
        folder, "ticket-embedder", actor_for(org["engineer"]), team, task=Task.EMBEDDING
    )
    assert version.context_length == 512 and 20_000_000 < version.parameter_count < 25_000_000

    with platform_path.served(
        org, team, version, "ticket-embeddings", agent_log, tmp_path, engine_args={"max_model_len": 256}
    ) as (sdk, log):
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
