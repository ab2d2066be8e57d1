"""/v1/rerank and /v1/score through a real gateway to a real vLLM CPU engine serving a tiny cross-encoder
(tests/e2e/cross_encoder.py): the engine takes the bodies the gateway forwards, answers under the endpoint's
name, and the usage event carries the engine's own token count, priced from the price book. The engine is
started once for the module, without the node agent (tests/e2e/test_serving.py covers that path)."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from serving.gateway import services as key_services
from serving.gateway import usage
from serving.gateway.models import UsageEvent
from tests.conftest import actor_for
from tests.e2e import cross_encoder, direct_engine
from tests.gateway.process import start_gateway, stop_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A vLLM CPU engine serving the tiny cross-encoder as ``ranker-dep``; its port."""
    root = tmp_path_factory.mktemp("cross-encoder")
    model = cross_encoder.build(root / "model")
    with direct_engine.running(
        model, "ranker-dep", root / "engine.log", "--max-model-len", "512", "--runner", "pooling"
    ) as port:
        yield port


def test_rerank_and_score_reach_a_real_engine_and_are_metered_by_its_tokens(engine, org, team, tmp_path):
    direct_engine.route(
        team,
        task="rerank",
        deployment="ranker-dep",
        endpoint="ranker",
        port=engine,
        max_model_len=512,
        input_per_million="2.0",
    )
    _, secret = key_services.create_key(actor=actor_for(org["admin"]), team=team, name="e2e rerank")

    gateway, base = start_gateway(tmp_path / "gateway.log")
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        documents = ["refund a double charge", "reset a password", "the app crashes on start"]
        deadline = time.monotonic() + 30
        while True:  # until the gateway's routing table has the endpoint
            ranked = httpx.post(
                f"{base}/v1/rerank",
                json={"model": "ranker", "query": "charged twice", "documents": documents, "top_n": 2},
                headers=headers,
                timeout=120,
            )
            if ranked.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ranked.status_code == 200, ranked.text
        answer = ranked.json()
        assert answer["model"] == "ranker" and len(answer["results"]) == 2
        assert {r["index"] for r in answer["results"]} <= {0, 1, 2}
        scored = httpx.post(
            f"{base}/v1/score",
            json={"model": "ranker", "text_1": "charged twice", "text_2": documents},
            headers=headers,
            timeout=120,
        )
        assert scored.status_code == 200, scored.text
        assert [row["index"] for row in scored.json()["data"]] == [0, 1, 2]
        time.sleep(0.5)
        usage.flush()
        events = {e.kind: e for e in UsageEvent.objects.all()}
        assert events["rerank"].input_tokens == answer["usage"]["prompt_tokens"] > 0
        assert events["score"].input_tokens == scored.json()["usage"]["prompt_tokens"] > 0
        assert events["rerank"].cost == Decimal(answer["usage"]["prompt_tokens"] * 2) / 1_000_000
    finally:
        stop_gateway(gateway)
