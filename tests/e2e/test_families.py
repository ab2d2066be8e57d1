"""A mixture-of-experts model end to end with real processes: a tiny random-weight Qwen3-MoE (built by
``registry.tiny_models``) is imported from a folder, registered with its experts, deployed by a Celery node
agent as a real vLLM CPU engine, and called through the gateway with the official openai SDK. Eager mode
(no graph compilation) keeps the engine's start short."""

from __future__ import annotations

import shutil
import time

import pytest

from portfolio.accounts.models import Team
from portfolio.registry import services as registry_services
from portfolio.registry import tiny_models
from portfolio.registry.choices import Family, Source, VersionStatus
from portfolio.registry.tasks import import_version
from serving import services
from serving.choices import PoolKind
from serving.models import Node
from tests.conftest import actor_for
from tests.e2e.agent import ENGINE_READY_TIMEOUT, NODE, ready_replica, wait

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_mixture_of_experts_registers_its_experts_and_answers_through_the_gateway(
    org, node_agent, settings, tmp_path
):
    import openai

    from serving.gateway import services as key_services
    from serving.gateway import usage
    from serving.gateway.models import UsageEvent
    from tests.gateway.process import start_gateway, stop_gateway

    _, agent_log = node_agent
    admin, engineer = actor_for(org["admin"]), actor_for(org["engineer"])
    team = Team.objects.get(slug="support-ai")
    tokenizer = tiny_models.save_demo_tokenizer(tmp_path / "tokenizer")
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    folder = tiny_models.build(Family.MOE, settings.IMPORT_ROOTS[0] / "tiny-moe", tokenizer)
    shutil.rmtree(tokenizer)

    model = registry_services.create_model(actor=engineer, name="tiny-moe", owner_team=team)
    version = registry_services.start_import(
        actor=engineer, model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_detail
    assert version.family == Family.MOE
    facts = version.architecture_facts
    assert (facts["experts"], facts["experts_per_token"]) == (4, 2)
    assert facts["active_parameters"] < facts["total_parameters"] == version.parameter_count

    services.create_pool(actor=admin, name="local-cpu", kind=PoolKind.CPU)
    node = wait(
        "the node agent to register", lambda: Node.objects.filter(name=NODE).first(), 120, [agent_log]
    )
    deployment = services.create_deployment(
        actor=engineer,
        name="moe",
        team=team,
        version=version,
        pool=node.pool,
        args={"max_model_len": 512, "max_num_seqs": 4, "enforce_eager": True},
    )
    started = time.monotonic()
    wait(
        "the MoE replica to become ready",
        lambda: ready_replica(deployment),
        ENGINE_READY_TIMEOUT,
        [agent_log, *(tmp_path / "node-data" / "engines" / "moe").glob("*.log")],
        interval=3,
    )
    print(f"tiny MoE engine ready after {time.monotonic() - started:.0f} s")
    services.create_endpoint(actor=admin, name="experts", team=team, routes=[{"deployment": "moe"}])
    _, secret = key_services.create_key(actor=admin, team=team, name="e2e moe", monthly_token_budget=100_000)

    log = tmp_path / "gateway.log"
    gateway, base = start_gateway(log)
    try:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)
        wait(
            "the gateway to route to the endpoint",
            lambda: "experts" in {m.id for m in sdk.models.list()},
            30,
            [log],
        )
        # Random weights answer nonsense: what is proven is that the experts route and the tokens flow.
        answer = sdk.chat.completions.create(
            model="experts",
            messages=[{"role": "user", "content": "Route this ticket: I was charged twice."}],
            max_tokens=8,
            temperature=0,
        )
        assert answer.model == "experts"
        assert answer.usage.completion_tokens == 8 and answer.choices[0].message.content
        time.sleep(1)
        wait("the usage event", lambda: usage.flush() == 0 and UsageEvent.objects.exists(), 30, [log])
        event = UsageEvent.objects.get()
        assert (event.endpoint, event.status) == ("experts", 200)
        assert (event.input_tokens, event.output_tokens) == (answer.usage.prompt_tokens, 8)
    finally:
        stop_gateway(gateway)
