"""Budgets against a real vLLM replica (CPU) behind a real gateway: calls with several completions (n > 1),
several prompts and a stream are admitted on a budget of exactly what the gateway reserves for them, and
the engine's own usage, as billed, never exceeds that reservation."""

from __future__ import annotations

import orjson
import pytest

from serving import services
from tests.conftest import actor_for
from tests.e2e.agent import deploy_demo_model, wait, wait_until_ready

# An engine start takes minutes on two shared cores: more than the suite's default timeout of 600 s.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(1800)]
CONTEXT = 512


def test_calls_with_several_completions_bill_no_more_than_was_reserved(org, node_agent, settings, tmp_path):
    import httpx

    from serving.gateway import payloads, usage
    from serving.gateway import services as key_services
    from serving.gateway.models import UsageEvent
    from tests.gateway.process import start_gateway, stop_gateway

    _, agent_log = node_agent
    admin = actor_for(org["admin"])
    deployment = deploy_demo_model(admin, settings, tmp_path, agent_log, {"max_model_len": CONTEXT})
    team = deployment.owner_team
    wait_until_ready(deployment, tmp_path, agent_log)
    services.create_endpoint(actor=admin, name="budgeted", team=team, routes=[{"deployment": "smol"}])

    question = [{"role": "user", "content": "Write a short poem about the sea."}]
    calls = [  # ignore_eos: every completion runs to its limit, the most the engine can produce
        (
            "chat",
            "/v1/chat/completions",
            {"model": "budgeted", "messages": question, "n": 3, "max_tokens": 12, "ignore_eos": True},
        ),
        (
            "completion",
            "/v1/completions",
            {
                "model": "budgeted",
                "prompt": ["The sea is", "Ships sail"],
                "n": 2,
                "max_tokens": 8,
                "ignore_eos": True,
            },
        ),
        (
            "chat",
            "/v1/chat/completions",
            {
                "model": "budgeted",
                "messages": question,
                "n": 2,
                "max_completion_tokens": 10,
                "max_tokens": 1,
                "ignore_eos": True,
                "stream": True,
            },
        ),
    ]
    log = tmp_path / "gateway.log"
    gateway, base_url = start_gateway(log)
    try:
        for kind, path, body in calls:
            data = orjson.dumps(body)
            shape = payloads.check(kind, body, len(data), max_n=8, max_inputs=2048)
            reserved, _ = payloads.worst_case(shape, CONTEXT)
            # A budget of exactly the reservation: admitted only if the gateway reserves what we computed.
            key, secret = key_services.create_key(
                actor=admin, team=team, name=f"e2e {kind}", monthly_token_budget=reserved
            )
            headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
            wait(
                "the gateway to route to the endpoint",
                lambda headers=headers: (
                    httpx.get(f"{base_url}/v1/models", headers=headers).json().get("data")
                ),
                30,
                [log],
            )
            response = httpx.post(f"{base_url}{path}", content=data, headers=headers, timeout=300)
            assert response.status_code == 200, response.text
            if body.get("stream"):
                events = [line for line in response.text.splitlines() if line.startswith("data: {")]
                assert events and all('"usage"' not in line for line in events), "no usage unless asked for"
                assert all(orjson.loads(line[6:])["choices"] for line in events)
                engine_usage = None
            else:
                engine_usage = response.json()["usage"]
                assert len(response.json()["choices"]) == shape.choices * len(shape.prompts)
            wait(
                "the usage event",
                lambda key=key: usage.flush() == 0 and UsageEvent.objects.filter(api_key=key).exists(),
                30,
                [log],
            )
            event = UsageEvent.objects.get(api_key=key)
            billed = event.input_tokens + event.output_tokens
            per_choice = body.get("max_completion_tokens") or body["max_tokens"]
            assert event.output_tokens == shape.choices * len(shape.prompts) * per_choice, (
                "every completion billed"
            )
            if engine_usage is not None:
                assert (event.input_tokens, event.output_tokens) == (
                    engine_usage["prompt_tokens"],
                    engine_usage["completion_tokens"],
                )
            assert billed <= reserved, f"{kind}: billed {billed}, reserved {reserved}"
            print(
                f"{kind} {path}: n={shape.choices}, prompts={len(shape.prompts)}: reserved {reserved}, "
                f"billed {billed} ({event.input_tokens} in, {event.output_tokens} out)"
            )
            again = httpx.post(f"{base_url}{path}", content=data, headers=headers, timeout=300)
            assert again.status_code == 429 and "could use up to" in again.json()["error"]["message"]
    finally:
        stop_gateway(gateway)
