"""What a composite endpoint asks of its hops is bounded by what it reserved, through a real gateway and
fake engines: the prompt's log-probabilities are refused (a vote would get them n times over), a router's
classifier is billed for its own small question even when it fails, a malformed text part is a 400 before
any hop, and a chat request escalated to a base model gets a chat call's length (the rest of its context),
not 16 tokens."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from serving.gateway import payloads
from serving.gateway.models import UsageEvent
from tests.gateway.conftest import flush_settled, wait_for_model
from tests.gateway.test_composite import chat, composite, ticket_label
from tests.gateway.test_composite import router as router  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db(transaction=True)


def post(base: str, secret: str, route: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/{route}", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=20
    )


def test_the_prompts_log_probabilities_are_refused_before_any_hop(gateway_url, stack, team):
    """A vote's sampler answers n choices, each holding every prompt token's log-probabilities: the check of
    the client's request (one choice) let n times its bound through to the engine."""
    dep, engines = stack["deployment"]("sampler-dep", answer=lambda b, i: "Paris")
    stack["endpoint"]("sampler", dep)
    composite("wise", "vote", {"endpoint": "sampler", "n": 4, "method": "best_of_n"}, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "wise")
    for route, extra in (
        ("completions", {"prompt_logprobs": 5}),
        ("completions", {"echo": True, "logprobs": 5}),
        ("completions", {"echo": True}),
        ("chat/completions", {"prompt_logprobs": 1}),
    ):
        asked = (
            {"prompt": "x" * 1000}
            if route == "completions"
            else {"messages": [{"role": "user", "content": "x"}]}
        )
        response = post(gateway_url, secret, route, {"model": "wise", "max_tokens": 4, **asked, **extra})
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["param"] in extra and "composite endpoint" in error["message"]
    assert engines[0].requests == []
    assert (
        post(gateway_url, secret, "completions", {"model": "wise", "prompt": "x", "echo": False}).status_code
        == 200
    )


def test_a_classifier_that_fails_is_billed_for_its_own_question(gateway_url, stack, team):
    """The classifier took the question and did not answer in time: it is billed the worst case it was
    reserved for (a short question, ``max_tokens`` 4), not the client's request's (up to its context)."""
    classifier, _ = stack["deployment"]("slow-labeller-dep", answer=ticket_label, delay=3)
    stack["endpoint"]("labeller", classifier, price=("1000000", "1000000"))
    general, general_engines = stack["deployment"]("general-dep")
    stack["endpoint"]("general", general)
    config = {"classifier": "labeller", "routes": {"tech": "general"}, "default": "general", "max_tokens": 4}
    composite("support", "router", config, team)
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "support")
    text = "I was charged twice. " * 5
    response = post(
        gateway_url,
        secret,
        "chat/completions",
        {"model": "support", "messages": [{"role": "user", "content": text}]},
    )
    assert response.status_code == 504, response.text
    flush_settled()
    event = UsageEvent.objects.get(endpoint="labeller")
    assert (event.status, event.via) == (504, "support")
    assert event.output_tokens == 4, "the classifier's own max_tokens"
    assert event.input_tokens <= len(text) + 64
    assert general_engines[0].requests == []


def test_a_malformed_text_part_is_refused_before_any_hop(gateway_url, stack, router):
    """A text part whose text is not a string: the router's reading of the user's text raised, a 500."""
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "support")
    for text in (None, 5, ["a"]):
        response = post(
            gateway_url,
            secret,
            "chat/completions",
            {"model": "support", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_type", "messages[0].content[0].text")
    assert all(engines[0].requests == [] for engines in router.values())


def test_a_chat_request_escalated_to_a_base_model_without_a_limit_gets_the_rest_of_the_context(
    gateway_url, stack, team
):
    """No ``max_tokens`` from the client: the completion the base model was asked with had none either, and
    the completions route's default (16 tokens) cut every escalated answer short. Nor the whole context,
    which vLLM refuses with the prompt (test_composite_hops.py): what the prompt leaves of it."""
    small, _ = stack["deployment"]("t-small-dep", answer=lambda b, i: "maybe", logprob=-3.0)
    stack["endpoint"]("t-small", small)
    large, large_engines = stack["deployment"]("t-base-dep", answer=lambda b, i: "billing")
    large.version.has_chat_template = False
    large.version.save(update_fields=["has_chat_template"])
    stack["endpoint"]("t-base", large)
    config = {
        "small": "t-small",
        "large": "t-base",
        "threshold": -1.0,
        "large_template": "Ticket: {input}\nQueue:",
    }
    composite("templated", "cascade", config, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "templated")
    response = post(
        gateway_url,
        secret,
        "chat/completions",
        {"model": "templated", "messages": [{"role": "user", "content": "charged twice"}]},
    )
    assert response.status_code == 200 and response.headers["x-portfolio-escalated"] == "true", response.text
    prompt = len(b"Ticket: {input}\nQueue:") + len(b"charged twice")  # bytes bound tokens
    rest = 512 - prompt - payloads.SPECIAL_TOKENS
    assert large_engines[0].requests[0]["max_tokens"] == rest, "the rest of the large endpoint's context"
    limited = chat(gateway_url, secret, "templated", "charged twice")  # max_tokens 8
    assert limited.status_code == 200 and large_engines[0].requests[1]["max_tokens"] == 8


def test_a_vote_refuses_tools_before_any_hop(gateway_url, stack, team):
    """Samples that call tools have no text: every tool call, whatever it called, counted as one answer, and
    the first was returned as the majority's."""
    dep, engines = stack["deployment"]("voter-dep", answer=lambda b, i: "Paris")
    stack["endpoint"]("voter", dep)
    composite("polled", "vote", {"endpoint": "voter", "n": 3, "method": "majority"}, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "polled")
    tool = {"type": "function", "function": {"name": "delete_all", "parameters": {"type": "object"}}}
    body = {"model": "polled", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
    response = post(gateway_url, secret, "chat/completions", {**body, "tools": [tool]})
    assert response.status_code == 400, response.text
    assert (
        response.json()["error"]["param"] == "tools"
        and "vote endpoint" in response.json()["error"]["message"]
    )
    assert engines[0].requests == []
    assert post(gateway_url, secret, "chat/completions", body).status_code == 200
