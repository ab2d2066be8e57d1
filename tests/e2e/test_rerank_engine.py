"""/v1/rerank and /v1/score the platform's own way: a tiny random cross-encoder (tests/e2e/cross_encoder.py)
registered as a reranking model, deployed by the Celery node agent as a real vLLM CPU pooling engine, behind
an endpoint priced per million input tokens, called through a real gateway. The engine takes the bodies the
gateway forwards and answers under the endpoint's name, and the usage event carries the engine's own token
count, priced from the price book."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from portfolio.registry.choices import Family, Task
from serving.gateway import usage
from serving.gateway.models import UsageEvent
from tests.conftest import actor_for
from tests.e2e import cross_encoder
from tests.e2e.agent import wait
from tests.e2e.platform_path import import_folder, import_root, served

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_rerank_and_score_reach_a_deployed_cross_encoder_and_are_metered_by_its_tokens(
    org, team, node_agent, settings, tmp_path
):
    _, agent_log = node_agent
    folder = cross_encoder.build(import_root(settings, tmp_path) / "tiny-ranker")
    version = import_folder(folder, "tiny-ranker", actor_for(org["engineer"]), team, task=Task.RERANK)
    assert (version.family, version.context_length) == (Family.DENSE, 512)

    price = {"input_per_million": "2.0"}
    with served(org, team, version, "ranker", agent_log, tmp_path, price=price) as (sdk, log):
        base, headers = str(sdk.base_url).rstrip("/"), {"Authorization": f"Bearer {sdk.api_key}"}
        documents = ["refund a double charge", "reset a password", "the app crashes on start"]
        ranked = httpx.post(
            f"{base}/rerank",
            json={"model": "ranker", "query": "charged twice", "documents": documents, "top_n": 2},
            headers=headers,
            timeout=120,
        )
        assert ranked.status_code == 200, ranked.text
        answer = ranked.json()
        assert answer["model"] == "ranker" and len(answer["results"]) == 2
        assert {r["index"] for r in answer["results"]} <= {0, 1, 2}
        scored = httpx.post(
            f"{base}/score",
            json={"model": "ranker", "text_1": "charged twice", "text_2": documents},
            headers=headers,
            timeout=120,
        )
        assert scored.status_code == 200, scored.text
        assert [row["index"] for row in scored.json()["data"]] == [0, 1, 2]
        time.sleep(1)
        wait("the usage events", lambda: usage.flush() == 0 and UsageEvent.objects.count() == 2, 30, [log])
    events = {e.kind: e for e in UsageEvent.objects.all()}
    assert (events["rerank"].endpoint, events["rerank"].status) == ("ranker", 200)
    assert events["rerank"].input_tokens == answer["usage"]["prompt_tokens"] > 0
    assert events["score"].input_tokens == scored.json()["usage"]["prompt_tokens"] > 0
    assert events["rerank"].cost == Decimal(answer["usage"]["prompt_tokens"] * 2) / 1_000_000
