"""Budgets against a real vLLM replica (CPU) behind a real gateway: calls with several completions (n > 1),
several prompts and a stream are admitted on a budget of exactly what the gateway reserves for them, and
the engine's own usage, as billed, never exceeds that reservation."""

from __future__ import annotations

import orjson
import pytest
from django.core.management import call_command

from portfolio.accounts.models import Team
from portfolio.registry.choices import VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from serving import services
from serving.choices import PoolKind
from serving.models import Node
from tests.conftest import actor_for
from tests.e2e.agent import ENGINE_READY_TIMEOUT, NODE, ready_replica, wait

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
    team = Team.objects.get(slug="support-ai")
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    settings.IMPORT_ROOTS[0].mkdir()
    call_command("seed_demo")
    call_command("import_demo_model")
    base = ModelVersion.objects.get(model__name=MODEL_NAME, status=VersionStatus.READY)
    services.create_pool(actor=admin, name="local-cpu", kind=PoolKind.CPU)
    node = wait(
        "the node agent to register", lambda: Node.objects.filter(name=NODE).first(), 120, [agent_log]
    )
    deployment = services.create_deployment(
        actor=admin,
        name="smol",
        team=team,
        version=base,
        pool=node.pool,
        replicas=1,
        args={"max_model_len": CONTEXT},
    )
    wait(
        "the replica to become ready",
        lambda: ready_replica(deployment),
        ENGINE_READY_TIMEOUT,
        [agent_log, *(tmp_path / "node-data" / "engines" / "smol").glob("*.log")],
        interval=3,
    )
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
