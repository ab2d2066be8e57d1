"""Composite endpoints through a real gateway and fake engines: a router asks its classifier and sends the
request to a specialist, a cascade keeps a confident small answer or escalates, a vote returns one of n
samples; each hop is checked against the key, metered as its own usage event and priced by its endpoint,
and the final hop streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import orjson
import pytest
from django.db import transaction

from serving.gateway import usage
from serving.gateway.models import UsageEvent
from serving.models import Endpoint
from tests.gateway.conftest import wait_for_model

pytestmark = pytest.mark.django_db(transaction=True)


def flush_events(count: int) -> None:
    """Flush the usage stream until the call's ``count`` events are stored: a composite settles its hops
    after the client has its answer (serving/gateway/composite.py), so a flush at once may find none yet."""
    deadline = time.monotonic() + 15
    while True:
        usage.flush()
        stored = UsageEvent.objects.count()
        if stored >= count or time.monotonic() > deadline:
            assert stored == count, f"{stored} usage events stored, {count} expected"
            return
        time.sleep(0.05)


def chat(base: str, secret: str, model: str, text: str = "hello", **extra) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )


def once_the_table_shows(
    call: Callable[[], httpx.Response], shows: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """The first response of ``call`` that ``shows`` an edit to Endpoint rows (or the last, at 15 s): the
    routing table is rebuilt every 200 ms, later on a busy machine, where a fixed sleep came too soon."""
    deadline = time.monotonic() + 15
    while True:
        response = call()
        if shows(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def events(response: httpx.Response) -> list:
    """A server-sent-event stream's data, parsed, and checked to end with [DONE]."""
    data = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]", "a valid stream ends with [DONE]"
    return [orjson.loads(d) for d in data[:-1]]


def streamed_text(response: httpx.Response) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in events(response) if c["choices"])


def composite(name: str, kind: str, config: dict, owner) -> Endpoint:
    with (
        transaction.atomic()
    ):  # as the service stores it (validated there: tests/serving/test_composite_endpoints.py)
        return Endpoint.objects.create(name=name, owner_team=owner, kind=kind, config=config)


def ticket_label(body: dict, index: int) -> str:
    """The fake classifier: 'Billing.' for a message about money, else 'Tech'."""
    return "Billing." if "charged" in body["messages"][-1]["content"] else "Tech"


@pytest.fixture
def router(stack, team):
    classifier, classifier_engines = stack["deployment"]("labeller-dep", answer=ticket_label)
    stack["endpoint"]("labeller", classifier, price=("1000000", "1000000"))
    billing, billing_engines = stack["deployment"]("billing-dep", answer=lambda b, i: "refund on its way")
    stack["endpoint"]("billing", billing, price=("2000000", "2000000"))
    tech, tech_engines = stack["deployment"]("tech-dep")
    stack["endpoint"]("tech", tech)
    general, general_engines = stack["deployment"]("general-dep")
    stack["endpoint"]("general", general)
    config = {
        "classifier": "labeller",
        "routes": {"billing": "billing", "tech": "tech"},
        "default": "general",
        "max_tokens": 4,
        "system": "Name the queue.",
    }
    composite("support", "router", config, team)
    engines = {"labeller": classifier_engines, "billing": billing_engines, "tech": tech_engines}
    return engines | {"general": general_engines}


def test_a_router_sends_each_request_to_the_specialist_its_label_names(gateway_url, stack, router):
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "support")
    money = chat(gateway_url, secret, "support", "I was charged twice")
    assert money.status_code == 200, money.text
    assert money.headers["x-portfolio-answered-by"] == "billing"
    assert money.headers["x-portfolio-route-label"] == "billing"
    assert money.json()["model"] == "support", "the client sees the name it called"
    assert money.json()["choices"][0]["message"]["content"].strip() == "refund on its way"
    asked = router["labeller"][0].requests[0]
    assert asked["messages"] == [
        {"role": "system", "content": "Name the queue."},
        {"role": "user", "content": "I was charged twice"},
    ]
    assert (asked["max_tokens"], asked["temperature"]) == (4, 0)
    crash = chat(gateway_url, secret, "support", "the app crashes")
    assert crash.headers["x-portfolio-answered-by"] == "tech" and len(router["tech"][0].requests) == 1
    assert router["general"][0].requests == []


def test_a_label_the_table_lacks_goes_to_the_default(gateway_url, stack, router, team):
    Endpoint.objects.filter(name="support").update(
        config={
            "classifier": "labeller",
            "routes": {"billing": "billing"},
            "default": "general",
            "max_tokens": 4,
        }
    )
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "support")
    response = once_the_table_shows(
        lambda: chat(gateway_url, secret, "support", "the app crashes"),
        lambda r: r.headers.get("x-portfolio-answered-by") != "tech",  # the old table's route
    )
    assert response.headers["x-portfolio-route-label"] == "tech"
    assert response.headers["x-portfolio-answered-by"] == "general"


def test_a_routed_request_streams_from_the_specialist(gateway_url, stack, router):
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "support")
    response = chat(gateway_url, secret, "support", "charged again", stream=True)
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-portfolio-answered-by"] == "billing"
    assert streamed_text(response).strip() == "refund on its way"
    assert {c["model"] for c in events(response)} == {"support"}
    assert router["billing"][0].requests[0]["stream"] is True


def test_each_hop_is_metered_via_the_router_and_priced_by_its_endpoint(gateway_url, stack, router):
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "support")
    assert chat(gateway_url, secret, "support", "I was charged twice").status_code == 200
    flush_events(2)
    rows = {e.endpoint: e for e in UsageEvent.objects.all()}
    assert set(rows) == {"labeller", "billing"}
    assert {e.via for e in rows.values()} == {"support"}
    labeller, billing = rows["labeller"], rows["billing"]
    assert labeller.output_tokens == 1 and labeller.cost == Decimal(labeller.input_tokens + 1)
    assert billing.cost == 2 * Decimal(billing.input_tokens + billing.output_tokens)
    assert labeller.event_id != billing.event_id


def test_a_hop_the_key_may_not_call_is_refused_naming_it(gateway_url, stack, router):
    scoped = stack["key"](scopes=["support", "labeller", "billing", "general"])
    wait_for_model(gateway_url, scoped, "support")
    response = chat(gateway_url, scoped, "support", "I was charged twice")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "model_not_allowed" and "`tech`" in error["message"]
    assert router["labeller"][0].requests == [], "refused before any hop ran"


@pytest.fixture
def cascade(stack, team):
    def make(name: str, small_logprob: float, threshold: float = -1.0, small_price: str = "1000000"):
        small, small_engines = stack["deployment"](
            f"{name}-small-dep", answer=lambda b, i: "Paris is the capital", logprob=small_logprob
        )
        stack["endpoint"](f"{name}-small", small, price=(small_price, small_price))
        large, large_engines = stack["deployment"](f"{name}-large-dep", answer=lambda b, i: "Paris, France")
        stack["endpoint"](f"{name}-large", large, price=("10000000", "10000000"))
        config = {"small": f"{name}-small", "large": f"{name}-large", "threshold": threshold}
        composite(name, "cascade", config, team)
        return small_engines[0], large_engines[0]

    return make


def test_a_confident_small_answer_is_kept_and_the_large_one_never_called(gateway_url, stack, cascade):
    small, large = cascade("sure", small_logprob=-0.2)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "sure")
    response = chat(gateway_url, secret, "sure")
    assert response.status_code == 200, response.text
    assert response.headers["x-portfolio-escalated"] == "false"
    assert response.headers["x-portfolio-answered-by"] == "sure-small"
    assert response.headers["x-portfolio-confidence"] == "-0.2000"
    body = response.json()
    assert (
        body["model"] == "sure" and body["choices"][0]["message"]["content"].strip() == "Paris is the capital"
    )
    assert "logprobs" not in body["choices"][0], "the client did not ask for them"
    assert small.requests[0]["logprobs"] is True and "stream" not in small.requests[0]
    assert large.requests == []


def test_a_kept_small_answer_is_sent_as_a_valid_stream_when_one_was_asked(gateway_url, stack, cascade):
    cascade("sure", small_logprob=-0.2)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "sure")
    response = chat(gateway_url, secret, "sure", stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"] == "text/event-stream"
    chunks = events(response)
    assert streamed_text(response).strip() == "Paris is the capital"
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["model"] == "sure"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_an_unsure_small_answer_escalates_and_the_large_one_streams(gateway_url, stack, cascade):
    small, large = cascade("unsure", small_logprob=-2.5)
    secret = stack["key"](monthly_budget=Decimal("10000"))
    wait_for_model(gateway_url, secret, "unsure")
    response = chat(gateway_url, secret, "unsure", stream=True)
    assert response.headers["x-portfolio-escalated"] == "true"
    assert response.headers["x-portfolio-answered-by"] == "unsure-large"
    assert streamed_text(response).strip() == "Paris, France"
    assert len(small.requests) == 1 and large.requests[0]["stream"] is True
    flush_events(2)
    rows = {e.endpoint: e for e in UsageEvent.objects.all()}
    assert set(rows) == {"unsure-small", "unsure-large"} and {e.via for e in rows.values()} == {"unsure"}
    assert rows["unsure-large"].cost == 10 * Decimal(rows["unsure-large"].input_tokens + 2)
    assert rows["unsure-large"].stream and not rows["unsure-small"].stream


def test_a_cascade_reserves_both_hops_so_a_budget_for_either_alone_is_refused(gateway_url, stack, cascade):
    cascade("sure", small_logprob=-0.2, small_price="10000000")
    # Both hops cost 10 per token: the worst case of either call (some 130 tokens) fits the budget, that of
    # the cascade (both calls) does not.
    secret = stack["key"](monthly_budget=Decimal("2000"))
    wait_for_model(gateway_url, secret, "sure")
    response = chat(gateway_url, secret, "sure")
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"
    assert chat(gateway_url, secret, "sure-small").status_code == 200
    assert chat(gateway_url, secret, "sure-large").status_code == 200


def test_a_vote_returns_the_majority_answer_and_bills_every_sample(gateway_url, stack, team):
    answers = ["Lyon", "Paris.", "paris", "Rome", "PARIS"]
    dep, engines = stack["deployment"]("sampler-dep", answer=lambda b, i: answers[i])
    stack["endpoint"]("sampler", dep)
    composite("wise", "vote", {"endpoint": "sampler", "n": 5, "method": "majority", "temperature": 0.7}, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "wise")
    response = chat(gateway_url, secret, "wise")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["message"]["content"].strip() for c in body["choices"]] == ["Paris."]
    assert body["choices"][0]["index"] == 0 and body["model"] == "wise"
    assert response.headers["x-portfolio-votes"] == "3/5"
    assert body["usage"]["completion_tokens"] == 5, "every sample is billed"
    assert (engines[0].requests[0]["n"], engines[0].requests[0]["temperature"]) == (5, 0.7)
    flush_events(1)
    event = UsageEvent.objects.get()
    assert (event.endpoint, event.via, event.output_tokens) == ("sampler", "wise", 5)


def test_a_vote_asking_more_completions_than_its_sampler_allows_now_is_refused_unsampled(
    gateway_url, stack, team
):
    """The sampler's cap lowered under the vote's n (a row edited by hand; the service refuses it): the
    vote may not ask for more completions per request than a caller of the sampler may."""
    dep, engines = stack["deployment"]("sampler-dep", answer=lambda b, i: "Paris")
    stack["endpoint"]("sampler", dep)
    composite("wise", "vote", {"endpoint": "sampler", "n": 5, "method": "majority"}, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "wise")
    Endpoint.objects.filter(name="sampler").update(max_n=2)
    # How many requests the sampler had before each call: the calls on the old table sample it.
    sampled: list[int] = []

    def vote() -> httpx.Response:
        sampled.append(len(engines[0].requests))
        return chat(gateway_url, secret, "wise")

    response = once_the_table_shows(vote, lambda r: r.status_code != 200)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "composite_misconfigured" and "for 5 completions" in error["message"]
    assert len(engines[0].requests) == sampled[-1], "the refused vote asked the sampler nothing"


def test_best_of_n_returns_the_most_confident_sample_even_as_a_stream(gateway_url, stack, team):
    dep, _ = stack["deployment"](
        "sampler-dep", answer=lambda b, i: f"answer{i}", logprob=lambda i: -1.0 if i != 2 else -0.1
    )
    stack["endpoint"]("sampler", dep)
    composite("best", "vote", {"endpoint": "sampler", "n": 4, "method": "best_of_n"}, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "best")
    response = chat(gateway_url, secret, "best", stream=True)
    assert streamed_text(response).strip() == "answer2"


def test_a_composite_asked_for_several_choices_is_refused(gateway_url, stack, team):
    dep, _ = stack["deployment"]("sampler-dep")
    stack["endpoint"]("sampler", dep)
    composite("wise", "vote", {"endpoint": "sampler", "n": 3}, team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "wise")
    response = chat(gateway_url, secret, "wise", n=2)
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def checks_paris(body: dict, index: int) -> str:
    """The fake verifier: yes to an answer naming Paris, no to any other."""
    shown = body["messages"][-1]["content"]
    answer = shown.split("Answer:\n", 1)[1].split("\n\n", 1)[0]
    return "Yes." if "paris" in answer.lower() else "No"


@pytest.fixture
def verified_cascade(stack, team):
    def make(small_answer: str):
        small, small_engines = stack["deployment"]("v-small-dep", answer=lambda b, i: small_answer)
        stack["endpoint"]("v-small", small, price=("1000000", "1000000"))
        large, large_engines = stack["deployment"]("v-large-dep", answer=lambda b, i: "Paris, France")
        stack["endpoint"]("v-large", large, price=("10000000", "10000000"))
        checker, checker_engines = stack["deployment"]("checker-dep", answer=checks_paris)
        stack["endpoint"]("checker", checker, price=("3000000", "3000000"))
        config = {"small": "v-small", "large": "v-large", "confidence": "verifier", "verifier": "checker"}
        composite("verified", "cascade", config, team)
        return small_engines[0], checker_engines[0], large_engines[0]

    return make


def test_a_cascade_keeps_the_small_answer_its_verifier_says_yes_to(gateway_url, stack, verified_cascade):
    small, checker, large = verified_cascade("Paris is the capital")
    secret = stack["key"](monthly_budget=Decimal("10000"))
    wait_for_model(gateway_url, secret, "verified")
    response = chat(gateway_url, secret, "verified", "What is the capital of France?")
    assert response.status_code == 200, response.text
    assert response.headers["x-portfolio-verdict"] == "yes"
    assert response.headers["x-portfolio-escalated"] == "false"
    assert response.headers["x-portfolio-answered-by"] == "v-small"
    assert response.json()["choices"][0]["message"]["content"].strip() == "Paris is the capital"
    assert "logprobs" not in small.requests[0], "a verifier, not log-probabilities, vouches for it"
    asked = checker.requests[0]["messages"][-1]["content"]
    assert "What is the capital of France?" in asked and "Paris is the capital" in asked
    assert large.requests == []


def test_a_cascade_escalates_when_its_verifier_says_no_and_meters_the_verifier_as_a_hop(
    gateway_url, stack, verified_cascade
):
    small, checker, large = verified_cascade("Lyon")
    secret = stack["key"](monthly_budget=Decimal("10000"))
    wait_for_model(gateway_url, secret, "verified")
    response = chat(gateway_url, secret, "verified", "What is the capital of France?", stream=True)
    assert response.headers["x-portfolio-verdict"] == "no"
    assert response.headers["x-portfolio-escalated"] == "true"
    assert response.headers["x-portfolio-answered-by"] == "v-large"
    assert streamed_text(response).strip() == "Paris, France"
    flush_events(3)
    rows = {e.endpoint: e for e in UsageEvent.objects.all()}
    assert set(rows) == {"v-small", "checker", "v-large"} and {e.via for e in rows.values()} == {"verified"}
    verdict = rows["checker"]
    assert verdict.cost == 3 * Decimal(verdict.input_tokens + verdict.output_tokens)
    assert sorted(e.event_id[-2:] for e in rows.values()) == ["-1", "-2", "-3"]
    assert rows["checker"].event_id.endswith("-2") and rows["v-large"].event_id.endswith("-3")


def test_a_vote_by_a_verifier_returns_the_accepted_answer_and_bills_each_question(gateway_url, stack, team):
    answers = ["Lyon", "Paris.", "lyon", "Lyon", "paris"]
    dep, _ = stack["deployment"]("sampler-dep", answer=lambda b, i: answers[i])
    stack["endpoint"]("sampler", dep)
    checker, checker_engines = stack["deployment"]("checker-dep", answer=checks_paris)
    stack["endpoint"]("checker", checker)
    composite(
        "judged", "vote", {"endpoint": "sampler", "n": 5, "method": "verifier", "verifier": "checker"}, team
    )
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "judged")
    response = chat(gateway_url, secret, "judged", "What is the capital of France?")
    assert response.status_code == 200, response.text
    assert [c["message"]["content"].strip() for c in response.json()["choices"]] == ["Paris."]
    assert response.headers["x-portfolio-verdict"] == "yes"
    assert response.headers["x-portfolio-votes"] == "2/5", "the majority (Lyon) was outvoted by the verifier"
    assert len(checker_engines[0].requests) == 2, "one question per distinct answer"
    flush_events(3)
    rows = list(UsageEvent.objects.order_by("event_id"))
    assert [e.endpoint for e in rows] == ["sampler", "checker", "checker"]
    assert {e.via for e in rows} == {"judged"} and len({e.event_id for e in rows}) == 3


def test_a_composite_asked_with_a_list_of_prompts_is_refused_before_any_hop(gateway_url, stack, team):
    """A vote's reservation and its verifier's questions count one prompt: a list would have the sampler
    answer every prompt n times and the verifier be asked about each distinct answer, unreserved."""
    dep, engines = stack["deployment"]("sampler-dep", answer=lambda b, i: f"answer{i}")
    stack["endpoint"]("sampler", dep)
    checker, checker_engines = stack["deployment"]("checker-dep", answer=checks_paris)
    stack["endpoint"]("checker", checker)
    composite(
        "judged", "vote", {"endpoint": "sampler", "n": 3, "method": "verifier", "verifier": "checker"}, team
    )
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "judged")
    for prompt in (["one", "two"], [[1, 2], [3, 4]]):
        response = httpx.post(
            f"{gateway_url}/v1/completions",
            json={"model": "judged", "prompt": prompt, "max_tokens": 4},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=20,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "prompt" and "one prompt per request" in error["message"]
    assert engines[0].requests == [] and checker_engines[0].requests == []
    single = httpx.post(
        f"{gateway_url}/v1/completions",
        json={"model": "judged", "prompt": ["What is the capital of France?"], "max_tokens": 4},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert single.status_code == 200, single.text
    # The verifier is asked about that prompt, not about an empty request.
    assert checker_engines[0].requests and all(
        "capital of France" in str(asked) for asked in checker_engines[0].requests
    ), checker_engines[0].requests


def test_a_chat_request_escalated_to_a_base_model_is_asked_with_the_cascades_plain_prompt(
    gateway_url, stack, team
):
    small, _ = stack["deployment"]("t-small-dep", answer=lambda b, i: "maybe billing", logprob=-3.0)
    stack["endpoint"]("t-small", small)
    large, large_engines = stack["deployment"]("t-base-dep", answer=lambda b, i: "billing")
    large.version.has_chat_template = False
    large.version.save(update_fields=["has_chat_template"])
    stack["endpoint"]("t-base", large, price=("10000000", "10000000"))
    template = "Ticket: my card was charged\nQueue: billing\n\nTicket: {input}\nQueue:"
    config = {"small": "t-small", "large": "t-base", "threshold": -1.0, "large_template": template}
    composite("templated", "cascade", {**config, "large_stop": ["\n"]}, team)
    secret = stack["key"](monthly_budget=Decimal("10000"))
    wait_for_model(gateway_url, secret, "templated")
    response = chat(gateway_url, secret, "templated", "charged {twice}", stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["x-portfolio-escalated"] == "true"
    assert response.headers["x-portfolio-answered-by"] == "t-base"
    assert streamed_text(response).strip() == "billing"
    assert {c["object"] for c in events(response)} == {"chat.completion.chunk"}
    asked = large_engines[0].requests[0]
    assert asked["prompt"] == template.replace("{input}", "charged {twice}") and asked["stop"] == ["\n"]
    assert asked["max_tokens"] == 8 and "messages" not in asked
    flush_events(2)
    rows = {e.endpoint: e for e in UsageEvent.objects.all()}
    assert rows["t-base"].kind == "completion" and rows["t-base"].via == "templated"
    Endpoint.objects.filter(name="templated").update(config=config | {"large_template": ""})
    refused = once_the_table_shows(
        lambda: chat(gateway_url, secret, "templated", "charged twice"), lambda r: r.status_code != 200
    )
    assert (
        refused.status_code == 400
        and "`t-base`, which has no chat template" in refused.json()["error"]["message"]
    )
