"""Composite endpoints against a real vLLM replica (CPU, SmolLM2-135M) behind a real gateway: a cascade
keeps a confident small answer and escalates an unsure one (the threshold set between the two confidences
the engine reports), the escalated answer streaming from the large endpoint; a router sends two requests
to two specialists by its classifier's labels. The small, large, classifier and specialist endpoints are
all plain endpoints on the one deployment: what matters here is the gateway's hops over a real engine's
answers, log-probabilities and usage. One engine start for the whole file."""

from __future__ import annotations

import httpx
import orjson
import pytest

from serving import services
from serving.models import Endpoint
from tests.conftest import actor_for
from tests.e2e.agent import deploy_demo_model, wait, wait_until_ready

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(1800)]
PROMPTS = ["What is the capital of France?", "Invent a new word and explain it.", "Write ten random letters."]
CANDIDATES = [
    "Say yes.",
    "Name a color.",
    "What is 2+2?",
    "Hello!",
    "Say no.",
    "Count to three.",
    "Name a fruit.",
]


def test_a_cascade_escalates_an_unsure_request_and_a_router_picks_two_specialists(
    org, node_agent, settings, tmp_path
):
    from serving.gateway import services as key_services
    from serving.gateway import usage, voting
    from serving.gateway.models import UsageEvent
    from tests.gateway.process import start_gateway, stop_gateway

    _, agent_log = node_agent
    admin = actor_for(org["admin"])
    deployment = deploy_demo_model(admin, settings, tmp_path, agent_log, {"max_model_len": 1024})
    team = deployment.owner_team
    for name in ("small", "large", "labeller", "spec-a", "spec-b"):
        services.create_endpoint(actor=admin, name=name, team=team, routes=[{"deployment": "smol"}])
    wait_until_ready(deployment, tmp_path, agent_log)
    log = tmp_path / "gateway.log"
    gateway, base_url = start_gateway(log)
    _, secret = key_services.create_key(actor=admin, team=team, name="e2e smart")
    headers = {"Authorization": f"Bearer {secret}"}

    def chat(model: str, text: str, **extra) -> httpx.Response:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 12,
            "temperature": 0,
        }
        return httpx.post(f"{base_url}/v1/chat/completions", json=body | extra, headers=headers, timeout=300)

    def routed(name: str) -> bool:
        return any(
            m["id"] == name for m in httpx.get(f"{base_url}/v1/models", headers=headers).json()["data"]
        )

    try:
        wait("the gateway to route to small", lambda: routed("small"), 30, [log])
        # The engine's confidence in each answer, as the cascade will read it: the threshold goes between.
        confidence = {}
        for text in PROMPTS:
            answer = chat("small", text, logprobs=True)
            assert answer.status_code == 200, answer.text
            confidence[text] = voting.mean_logprob(answer.json()["choices"][0])
        print(f"mean token log-probabilities: {confidence}")
        sure, unsure = max(PROMPTS, key=confidence.__getitem__), min(PROMPTS, key=confidence.__getitem__)
        assert confidence[sure] > confidence[unsure]
        threshold = (confidence[sure] + confidence[unsure]) / 2
        services.create_endpoint(
            actor=admin,
            name="cascade",
            team=team,
            routes=[],
            kind="cascade",
            config={"small": "small", "large": "large", "threshold": round(threshold, 4)},
        )
        # The router's table: the labels the classifier really gives two messages that it labels differently.
        labels: dict[str, str] = {}
        for text in CANDIDATES:
            label = voting.label(
                chat("labeller", text, max_tokens=4).json()["choices"][0]["message"]["content"]
            )
            if label and label not in labels.values():
                labels[text] = label
            if len(labels) == 2:
                break
        assert len(labels) == 2, f"two messages with different labels among {CANDIDATES}"
        (text_a, label_a), (text_b, label_b) = labels.items()
        services.create_endpoint(
            actor=admin,
            name="router",
            team=team,
            routes=[],
            kind="router",
            config={
                "classifier": "labeller",
                "routes": {label_a: "spec-a", label_b: "spec-b"},
                "default": "small",
            },
        )
        wait(
            "the gateway to route to the composites",
            lambda: routed("cascade") and routed("router"),
            30,
            [log],
        )

        kept = chat("cascade", sure)
        assert kept.status_code == 200, kept.text
        assert (kept.headers["x-portfolio-escalated"], kept.headers["x-portfolio-answered-by"]) == (
            "false",
            "small",
        )
        assert kept.json()["model"] == "cascade" and "logprobs" not in kept.json()["choices"][0]
        escalated = chat("cascade", unsure, stream=True)
        assert escalated.status_code == 200, escalated.text
        assert (escalated.headers["x-portfolio-escalated"], escalated.headers["x-portfolio-answered-by"]) == (
            "true",
            "large",
        )
        data = [line[6:] for line in escalated.text.split("\n\n") if line.startswith("data: ")]
        assert data[-1] == "[DONE]" and all(orjson.loads(d)["model"] == "cascade" for d in data[:-1])
        assert "".join(
            orjson.loads(d)["choices"][0]["delta"].get("content", "")
            for d in data[:-1]
            if orjson.loads(d)["choices"]
        ).strip(), "the large endpoint's answer streamed"

        first, second = chat("router", text_a), chat("router", text_b)
        assert (first.headers["x-portfolio-route-label"], first.headers["x-portfolio-answered-by"]) == (
            label_a,
            "spec-a",
        )
        assert (second.headers["x-portfolio-route-label"], second.headers["x-portfolio-answered-by"]) == (
            label_b,
            "spec-b",
        )
        assert first.json()["model"] == "router" and first.json()["usage"]["completion_tokens"] > 0

        wait(
            "the usage events",
            lambda: usage.flush() == 0 and UsageEvent.objects.filter(via="router").count() == 4,
            30,
            [log],
        )
        hops = sorted(UsageEvent.objects.filter(via__in=["cascade", "router"]).values_list("via", "endpoint"))
        assert hops == sorted(
            [
                ("cascade", "small"),
                ("cascade", "small"),
                ("cascade", "large"),
                ("router", "labeller"),
                ("router", "spec-a"),
                ("router", "labeller"),
                ("router", "spec-b"),
            ]
        )
        assert all(e.output_tokens > 0 and e.status == 200 for e in UsageEvent.objects.filter(via="cascade"))
        from django.utils import timezone

        from serving.cascade_savings import cascade_savings

        savings = cascade_savings(Endpoint.objects.get(name="cascade"), timezone.now().replace(day=1, hour=0))
        assert (savings.requests, savings.escalated) == (2, 1)
    finally:
        stop_gateway(gateway)
