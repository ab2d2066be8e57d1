"""A composite endpoint's hops are called as the key's own calls to them would be, through a real gateway and
fake engines: each follows its fallbacks (and the reservation counts them), an endpoint made composite is
served as one whatever routes it kept, a base model reached by escalation gets the whole message and the
rest of its context, and a failure after billed hops tells the SDKs not to send it again."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace

import httpx
import openai
import orjson
import pytest

from serving import services
from serving.gateway import composite, hop_prompts, payloads
from serving.gateway.errors import GatewayError
from serving.gateway.limits import Verdict
from serving.gateway.models import UsageEvent
from serving.gateway.routing import Composite, EndpointInfo, Snapshot
from serving.models import Deployment
from tests.conftest import actor_for
from tests.gateway.conftest import flush_settled, wait_for_model
from tests.gateway.key_records import key_record
from tests.gateway.test_composite import chat, once_the_table_shows, ticket_label
from tests.gateway.test_composite import composite as make_composite
from tests.gateway.test_composite import router as router  # noqa: PLC0414 - the fixture, used by name
from tests.gateway.test_voting import _endpoint

pytestmark = pytest.mark.django_db(transaction=True)


def post(base: str, secret: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=20
    )


def router_with_a_specialist_down(stack, team, *, fallback: bool) -> dict:
    """A router whose ``billing`` specialist has no ready replica: falling back to ``general``, or not."""
    classifier, classifier_engines = stack["deployment"]("labeller-dep", answer=ticket_label)
    stack["endpoint"]("labeller", classifier, price=("1000000", "1000000"))
    general, general_engines = stack["deployment"]("general-dep", answer=lambda b, i: "from general")
    general_endpoint = stack["endpoint"]("general", general)
    billing, _ = stack["deployment"]("billing-dep", replicas=0)  # scaled to zero
    stack["endpoint"]("billing", billing, fallback=general_endpoint if fallback else None)
    config = {"classifier": "labeller", "routes": {"billing": "billing"}, "default": "general"}
    make_composite("support", "router", {**config, "max_tokens": 4}, team)
    return {"labeller": classifier_engines[0], "general": general_engines[0]}


def test_a_hop_follows_its_fallback_as_a_call_to_it_would(gateway_url, stack, team):
    """A router's specialist scaled to zero, falling back to another endpoint: called directly it answered
    from the fallback, called by the router a 503 naming the router."""
    engines = router_with_a_specialist_down(stack, team, fallback=True)
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "support")
    direct = chat(gateway_url, secret, "billing", "I was charged twice")
    assert direct.status_code == 200, direct.text
    response = chat(gateway_url, secret, "support", "I was charged twice")
    assert response.status_code == 200, response.text
    assert response.headers["x-portfolio-answered-by"] == "general"
    assert response.headers["x-portfolio-route-label"] == "billing"
    assert response.json()["model"] == "support"
    assert response.json()["choices"][0]["message"]["content"].strip() == "from general"
    assert len(engines["general"].requests) == 2
    flush_settled()
    routed = UsageEvent.objects.filter(via="support")
    assert sorted(routed.values_list("endpoint", flat=True)) == ["general", "labeller"]
    assert routed.get(endpoint="general").status == 200


def test_a_hop_without_a_replica_is_named_and_its_billed_hops_are_not_sent_again(gateway_url, stack, team):
    """The classifier answered (billed), then no replica of the specialist was ready: the 503 said nothing
    of the billed hop, so the openai SDK sent the request twice more, the classifier billed each time."""
    engines = router_with_a_specialist_down(stack, team, fallback=False)
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "support")
    response = chat(gateway_url, secret, "support", "I was charged twice")
    assert response.status_code == 503, response.text
    assert response.headers.get("x-should-retry") == "false"
    message = response.json()["error"]["message"]
    assert "`billing`" in message and "`support`" in message, message
    sdk = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, timeout=20)  # its default: 2 retries
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "charged again"}], max_tokens=8
        )
    assert refused.value.status_code == 503
    assert len(engines["labeller"].requests) == 2, "one classifier question per request, none resent"
    flush_settled()
    labelled = UsageEvent.objects.filter(endpoint="labeller", via="support")
    assert labelled.count() == 2 and all(e.status == 200 and e.cost > 0 for e in labelled)


def test_an_engines_error_on_the_last_hop_after_a_billed_one_is_not_to_be_sent_again(
    gateway_url, stack, router
):
    """The classifier answered (billed); the specialist's engine refused the request, and its error went to
    the client as it came: a client retrying it would pay for the classifier each time."""
    secret = stack["key"](monthly_budget=Decimal("10000"))
    wait_for_model(gateway_url, secret, "support")
    response = chat(gateway_url, secret, "support", "I was charged twice", max_tokens=600)  # context: 512
    assert response.status_code == 400 and "max_model_len" in response.text, response.text
    assert response.headers["x-portfolio-answered-by"] == "billing"
    assert response.headers.get("x-should-retry") == "false"
    assert len(router["labeller"][0].requests) == 1
    plain = chat(gateway_url, secret, "billing", "I was charged twice", max_tokens=600)
    assert plain.status_code == 400 and "x-should-retry" not in plain.headers, "nothing billed before it"


def test_an_endpoint_made_composite_is_served_as_one_whatever_routes_it_kept(gateway_url, stack, team, org):
    """Plain on a base model without a chat template, then made a cascade of two chat endpoints: the routes
    it keeps (to go back) made the gateway refuse chat calls to it, before the cascade was reached."""
    base, base_engines = stack["deployment"]("base-dep")
    base.version.has_chat_template = False
    base.version.save(update_fields=["has_chat_template"])
    smart = stack["endpoint"]("smart", base)
    small, small_engines = stack["deployment"]("small-dep", answer=lambda b, i: "Paris", logprob=-0.1)
    stack["endpoint"]("small", small)
    large, _ = stack["deployment"]("large-dep")
    stack["endpoint"]("large", large)
    config = {"small": "small", "large": "large", "threshold": -1.0}
    services.configure_endpoint(actor=actor_for(org["owner"]), endpoint=smart, kind="cascade", config=config)
    assert smart.routes.exists(), "kept, to go back"
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "smart")
    response = once_the_table_shows(  # listed already as the plain endpoint it was
        lambda: chat(gateway_url, secret, "smart", "Capital of France?"), lambda r: r.status_code == 200
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-portfolio-answered-by"] == "small"
    assert response.json()["choices"][0]["message"]["content"].strip() == "Paris"
    assert len(small_engines[0].requests) == 1 and base_engines[0].requests == []


def escalating_to_a_base_model(stack, team, context: int) -> list:
    """A cascade whose small answer is always unsure, escalating to a base model asked with a template."""
    small, _ = stack["deployment"]("t-small-dep", answer=lambda b, i: "maybe", logprob=-3.0)
    stack["endpoint"]("t-small", small)
    large, large_engines = stack["deployment"](
        "t-base-dep", answer=lambda b, i: "billing", max_model_len=context
    )
    large.version.has_chat_template = False
    large.version.save(update_fields=["has_chat_template"])
    Deployment.objects.filter(pk=large.pk).update(engine_args={"max_model_len": context})
    stack["endpoint"]("t-base", large)
    config = {
        "small": "t-small",
        "large": "t-base",
        "threshold": -1.0,
        "large_template": "Ticket: {input}\nQueue:",
    }
    make_composite("templated", "cascade", config, team)
    return large_engines


def test_an_escalation_to_a_base_model_asks_for_no_more_than_its_context_holds(gateway_url, stack, team):
    """No limit from the client (the SDKs' default): the base model was asked for its whole context as
    max_tokens, which vLLM refuses (prompt + max_tokens over max_model_len), after the small hop was billed."""
    large_engines = escalating_to_a_base_model(stack, team, 512)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "templated")
    body = {"model": "templated", "messages": [{"role": "user", "content": "charged twice"}]}
    response = post(gateway_url, secret, body)
    assert response.status_code == 200, response.text
    assert response.headers["x-portfolio-escalated"] == "true"
    asked = large_engines[0].requests[0]
    bound = len(b"Ticket: {input}\nQueue:") + len(b"charged twice")  # the prompt's bytes bound its tokens
    assert asked["max_tokens"] == 512 - bound - payloads.SPECIAL_TOKENS, "the rest of the context"


def test_an_escalation_to_a_base_model_gets_the_whole_message(gateway_url, stack, team):
    """A message longer than a router's classifier is shown (16,000 characters) reached the large model cut."""
    large_engines = escalating_to_a_base_model(stack, team, 32_768)
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "templated")
    text = "x" * 20_000 + " END-MARKER"
    assert len(text) == 20_011
    response = post(
        gateway_url, secret, {"model": "templated", "messages": [{"role": "user", "content": text}]}
    )
    assert response.status_code == 200, response.text
    assert large_engines[0].requests[0]["prompt"] == f"Ticket: {text}\nQueue:"


# --- The reservation, without a gateway ---------------------------------------------------------------
def test_a_hops_fallbacks_are_reserved_as_a_plain_calls_are():
    """A specialist falling back to a dearer endpoint: the step's worst case is the dearer one's."""
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    dear = _endpoint("dear", 50)
    found = {"c": _endpoint("c", 0), "a": _endpoint("a", 1, fallback="dear")}
    router = Composite("router", classifier="c", table={"x": "a"}, default="a", label_tokens=4)
    chains = {"a": [found["a"], dear]}

    def chain_of(hop: EndpointInfo, kind: str, choices: int) -> list[EndpointInfo]:
        return chains.get(hop.name, [hop])

    _, money, steps = composite.reservation(router, found, shape, "hello", chains=chain_of)
    assert money == 30 * 50
    assert [sorted(hop.name for hop, _ in step) for step in steps] == [["c"], ["a", "dear"]]
    assert composite.reservation(router, found, shape, "hello")[1] == 30, "no fallbacks: the hop alone"


def test_a_long_message_is_cut_for_the_classifier_only_and_reserved_whole_for_the_base_model():
    text = "é" * 17_000  # 34,000 bytes
    router = Composite("router", classifier="c", table={"x": "a"}, default="a", label_tokens=4)
    shown = hop_prompts.classifier_request(router, _endpoint("c", 1, 100_000), 100_000, text)[1]["messages"][
        -1
    ]
    assert len(shown["content"].encode()) <= hop_prompts.LABEL_PROMPT_MAX
    assert hop_prompts.last_user_text("chat", {"messages": [{"role": "user", "content": text}]}) == text
    cascade = Composite("cascade", small="s", large="l", threshold=-1, large_template="Q: {input}")
    (bound,) = hop_prompts.shape(
        cascade, text, payloads.Shape(prompts=(1,), choices=1, per_choice=None)
    ).prompts
    assert bound >= len(f"Q: {text}".encode())


def test_a_gateway_fault_after_a_billed_hop_is_not_to_be_sent_again():
    """A bug in the gateway after the classifier was billed: a bare 500, which the SDKs send twice more."""
    router = Composite("router", classifier="c", table={"x": "s"}, default="s", label_tokens=4)
    found = {"c": _endpoint("c", 1), "s": _endpoint("s", 1)}
    first = _endpoint("r", 0, composite=router)

    def gateway(fails_at: str):
        async def dispatch(receive, send, request_id, chain, public, payload, outcome, started, caller):
            if chain[0].name == fails_at:
                raise RuntimeError("a bug")
            answer = {"choices": [{"message": {"content": "x"}}], "usage": {}}
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": orjson.dumps(answer)})
            outcome.status, outcome.input_tokens, outcome.output_tokens = 200, 5, 1

        async def admit(key, **asked):
            return Verdict(ok=True)

        async def write(commands):
            return None

        return SimpleNamespace(
            snapshot=Snapshot(endpoints={**found, "r": first}),
            limiter=SimpleNamespace(admit=admit, settle=lambda reservation, **spent: []),
            ledger="ledger",
            _cut_fallbacks=set(),
            _dispatch=dispatch,
            _write=write,
            _observe=lambda key, outcome, latency: None,
        )

    def call(fails_at: str) -> None:
        payload = {"model": "r", "messages": [{"role": "user", "content": "charged"}], "max_tokens": 8}
        shape = payloads.Shape(prompts=(40,), choices=1, per_choice=8)
        asyncio.run(
            composite.serve(
                gateway(fails_at),
                None,
                None,
                "req",
                "chat",
                (key_record(), {}),
                payload,
                shape,
                first,
                "e",
                0.0,
            )
        )

    with pytest.raises(GatewayError) as failed:
        call(fails_at="s")
    assert (failed.value.status, failed.value.code, failed.value.billed) == (500, "internal", True)
    with pytest.raises(RuntimeError):  # nothing billed yet: as app.py answers any bug
        call(fails_at="c")
