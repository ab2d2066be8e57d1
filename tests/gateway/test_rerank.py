"""/v1/rerank and /v1/score through a real gateway process against the stand-in engine (no cross-encoder
weights here; tests/gateway/media_engine.py answers in vLLM's shapes). The openai SDK has no such calls, so
plain HTTP, as Cohere- and Jina-style clients send it."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from serving.gateway.models import UsageEvent
from tests.gateway.conftest import flush_settled, wait_for_model
from tests.gateway.media import media_gateway

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["media_gateway"]
DOCUMENTS = ["refund a double charge", "reset a password", "the invoice was charged twice"]


@pytest.fixture
def ranker(media_gateway, stack):
    """A cross-encoder endpoint priced 1.0 per million input tokens, its engine, and a key of its team."""
    dep, engines = stack["deployment"]("ranker-dep", task="rerank", media=True)
    stack["endpoint"]("ranker", dep, price=("1.0", "0"))
    secret = stack["key"]()
    wait_for_model(media_gateway, secret, "ranker")
    return {"base": media_gateway, "secret": secret, "engine": engines[0], "stack": stack}


def call(ranker, path: str, body: dict, secret: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{ranker['base']}{path}",
        json=body,
        headers={"Authorization": f"Bearer {secret or ranker['secret']}"},
        timeout=20,
    )


def test_a_rerank_is_answered_under_the_endpoints_name_and_metered_by_the_engines_tokens(ranker):
    response = call(
        ranker, "/v1/rerank", {"model": "ranker", "query": "charged twice", "documents": DOCUMENTS}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "ranker", "never the deployment's name"
    assert answer["results"][0]["index"] == 2
    assert ranker["engine"].requests[-1]["model"] == "ranker-dep"
    flush_settled()
    event = UsageEvent.objects.get()
    tokens = sum(2 + 2 + len(d.split()) for d in DOCUMENTS)
    assert (event.kind, event.input_tokens, event.output_tokens) == ("rerank", tokens, 0)
    assert event.cost == Decimal(tokens) / 1_000_000


def test_a_score_of_one_text_against_several_is_one_score_per_pair(ranker):
    response = call(ranker, "/v1/score", {"model": "ranker", "text_1": "charged twice", "text_2": DOCUMENTS})
    assert response.status_code == 200, response.text
    assert [row["index"] for row in response.json()["data"]] == [0, 1, 2]
    flush_settled()
    assert UsageEvent.objects.get().kind == "score"


def test_rerank_needs_a_key_of_a_team_that_may_call_it(ranker, other_team):
    body = {"model": "ranker", "query": "q", "documents": ["d"]}
    assert call(ranker, "/v1/rerank", body, secret="slm_nope_nope").status_code == 401
    refused = call(ranker, "/v1/rerank", body, secret=ranker["stack"]["key"](owner=other_team))
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert ranker["engine"].requests == []


def test_a_chat_model_is_not_asked_to_rerank(ranker):
    dep, engines = ranker["stack"]["deployment"]("chatty-dep")
    ranker["stack"]["endpoint"]("chatty", dep)
    wait_for_model(ranker["base"], ranker["secret"], "chatty")
    refused = call(ranker, "/v1/rerank", {"model": "chatty", "query": "q", "documents": ["d"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_endpoint"
    assert "/v1/chat/completions" in refused.json()["error"]["message"]
    assert engines[0].requests == []


def test_the_tokens_per_minute_limit_holds_every_pair_before_the_engine(ranker):
    secret = ranker["stack"]["key"](tpm_limit=100)
    body = {"model": "ranker", "query": "q" * 30, "documents": ["d" * 30] * 2}  # 2 pairs of at most 68
    refused = call(ranker, "/v1/rerank", body, secret=secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert ranker["engine"].requests == []
    assert call(ranker, "/v1/rerank", {**body, "documents": ["d" * 30]}, secret=secret).status_code == 200


HOSTILE = [
    ("too many documents", "/v1/rerank", {"query": "q", "documents": ["d"] * 5}, "too_many_documents"),
    ("a long document", "/v1/rerank", {"query": "q", "documents": ["d" * 201]}, "text_too_long"),
    ("a long query", "/v1/rerank", {"query": "q" * 201, "documents": ["d"]}, "text_too_long"),
    ("no query", "/v1/rerank", {"documents": ["d"]}, "missing_required_parameter"),
    ("a number as query", "/v1/rerank", {"query": 7, "documents": ["d"]}, "invalid_type"),
    ("no documents", "/v1/rerank", {"query": "q", "documents": []}, "invalid_type"),
    ("an image document", "/v1/rerank",
     {"query": "q", "documents": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}]},
     "invalid_type"),
    ("a negative top_n", "/v1/rerank", {"query": "q", "documents": ["d"], "top_n": -1}, "invalid_value"),
    ("a huge top_n", "/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 10**30}, "invalid_type"),
    ("a top_n past the documents", "/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 2**40}, "invalid_value"),
    ("a boolean top_n", "/v1/rerank", {"query": "q", "documents": ["d"], "top_n": True}, "invalid_type"),
    ("a huge truncation", "/v1/rerank", {"query": "q", "documents": ["d"], "truncate_prompt_tokens": 2**40},
     "invalid_value"),
    ("an unknown field", "/v1/rerank", {"query": "q", "documents": ["d"], "return_documents": True},
     "unknown_parameter"),
    ("too many texts", "/v1/score", {"text_1": "q", "text_2": ["d"] * 5}, "too_many_documents"),
    ("mismatched pairs", "/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "invalid_value"),
    ("a long text", "/v1/score", {"text_1": "q" * 201, "text_2": "d"}, "text_too_long"),
    ("chat fields", "/v1/score", {"text_1": "q", "text_2": "d", "max_tokens": 5}, "unknown_parameter"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "code"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_rerank_and_score_bodies_are_refused_in_openais_shape(ranker, path, body, code):
    response = call(ranker, path, {"model": "ranker", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    assert ranker["engine"].requests == []
