"""Model families end to end with real processes: a tiny random-weight model of the family (built by
``registry.tiny_models``) is imported from a folder, registered with its architecture facts, deployed by a
Celery node agent as a real vLLM CPU engine, and called through the gateway with the official openai SDK.
Eager mode (no graph compilation) keeps each engine's start short. Random weights answer nonsense: what is
proven is that the family's path works and the tokens flow and are metered."""

from __future__ import annotations

import base64
import shutil
import struct
import time
import zlib
from contextlib import contextmanager

import pytest

from portfolio.accounts.models import Team
from portfolio.registry import services as registry_services
from portfolio.registry import tiny_models
from portfolio.registry.choices import Family, Source, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import import_version
from serving import services
from serving.choices import PoolKind
from serving.models import Node
from tests.conftest import actor_for
from tests.e2e.agent import ENGINE_READY_TIMEOUT, NODE, ready_replica, wait

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _import_tiny(family: str, name: str, engineer, team: Team, settings, tmp_path) -> ModelVersion:
    tokenizer = tiny_models.save_demo_tokenizer(tmp_path / "tokenizer")
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    folder = tiny_models.build(family, settings.IMPORT_ROOTS[0] / name, tokenizer)
    shutil.rmtree(tokenizer)
    model = registry_services.create_model(actor=engineer, name=name, owner_team=team)
    version = registry_services.start_import(
        actor=engineer, model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_detail
    assert version.family == family
    return version


@contextmanager
def _served(org, team: Team, version: ModelVersion, name: str, agent_log, tmp_path):
    """The version deployed by the node agent behind an endpoint ``name``: yields (sdk, gateway log)."""
    import openai

    from serving.gateway import services as key_services
    from tests.gateway.process import start_gateway, stop_gateway

    admin, engineer = actor_for(org["admin"]), actor_for(org["engineer"])
    services.create_pool(actor=admin, name="local-cpu", kind=PoolKind.CPU)
    node = wait(
        "the node agent to register", lambda: Node.objects.filter(name=NODE).first(), 120, [agent_log]
    )
    deployment = services.create_deployment(
        actor=engineer,
        name=name,
        team=team,
        version=version,
        pool=node.pool,
        args={"max_model_len": 512, "max_num_seqs": 4, "enforce_eager": True},
    )
    started = time.monotonic()
    wait(
        f"the {name} replica to become ready",
        lambda: ready_replica(deployment),
        ENGINE_READY_TIMEOUT,
        [agent_log, *(tmp_path / "node-data" / "engines" / name).glob("*.log")],
        interval=3,
    )
    print(f"tiny {version.family} engine ready after {time.monotonic() - started:.0f} s")
    services.create_endpoint(actor=admin, name=name, team=team, routes=[{"deployment": name}])
    _, secret = key_services.create_key(
        actor=admin, team=team, name=f"e2e {name}", monthly_token_budget=100_000
    )
    log = tmp_path / "gateway.log"
    gateway, base = start_gateway(log)
    try:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)
        wait(
            "the gateway to route to the endpoint",
            lambda: name in {m.id for m in sdk.models.list()},
            30,
            [log],
        )
        yield sdk, log
    finally:
        stop_gateway(gateway)


def _metered(endpoint: str, answer, log):
    from serving.gateway import usage
    from serving.gateway.models import UsageEvent

    time.sleep(1)
    wait("the usage event", lambda: usage.flush() == 0 and UsageEvent.objects.exists(), 30, [log])
    event = UsageEvent.objects.get()
    assert (event.endpoint, event.status) == (endpoint, 200)
    assert (event.input_tokens, event.output_tokens) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A one-colour RGB PNG, written with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_a_mixture_of_experts_registers_its_experts_and_answers_through_the_gateway(
    org, node_agent, settings, tmp_path
):
    _, agent_log = node_agent
    team = Team.objects.get(slug="support-ai")
    version = _import_tiny(Family.MOE, "tiny-moe", actor_for(org["engineer"]), team, settings, tmp_path)
    facts = version.architecture_facts
    assert (facts["experts"], facts["experts_per_token"]) == (4, 2)
    assert facts["active_parameters"] < facts["total_parameters"] == version.parameter_count

    with _served(org, team, version, "experts", agent_log, tmp_path) as (sdk, log):
        answer = sdk.chat.completions.create(
            model="experts",
            messages=[{"role": "user", "content": "Route this ticket: I was charged twice."}],
            max_tokens=8,
            temperature=0,
        )
        assert answer.model == "experts"
        assert answer.usage.completion_tokens == 8 and answer.choices[0].message.content
        _metered("experts", answer, log)


def test_a_vision_language_model_reads_an_image_part_through_the_gateway(org, node_agent, settings, tmp_path):
    _, agent_log = node_agent
    team = Team.objects.get(slug="support-ai")
    version = _import_tiny(
        Family.VISION_LANGUAGE, "tiny-vlm", actor_for(org["engineer"]), team, settings, tmp_path
    )
    assert version.architecture_facts["vision"]["parameters"] > 0

    image = "data:image/png;base64," + base64.b64encode(_png(64, 64, (200, 30, 30))).decode()
    with _served(org, team, version, "vision", agent_log, tmp_path) as (sdk, log):
        answer = sdk.chat.completions.create(
            model="vision",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Which queue does this scanned ticket belong to?"},
                        {"type": "image_url", "image_url": {"url": image}},
                    ],
                }
            ],
            max_tokens=4,
            temperature=0,
        )
        assert answer.model == "vision" and answer.usage.completion_tokens == 4
        # The engine saw the image: its tokens (the tiny tower's 2x2 after pixel shuffle, with their markers) are
        # in the prompt's count.
        text_only = sdk.chat.completions.create(
            model="vision",
            messages=[{"role": "user", "content": "Which queue does this scanned ticket belong to?"}],
            max_tokens=1,
            temperature=0,
        )
        image_tokens = version.architecture_facts["vision"]["tokens_per_image"]
        assert image_tokens == 4
        assert answer.usage.prompt_tokens - text_only.usage.prompt_tokens >= image_tokens


@pytest.mark.parametrize(
    ("family", "state_layers", "attention_layers"),
    [(Family.HYBRID, [0, 2, 3], [1]), (Family.STATE_SPACE, [0, 1], [])],
    ids=["hybrid-granite4", "state-space-mamba2"],
)
def test_a_model_that_keeps_state_answers_through_the_gateway(
    family, state_layers, attention_layers, org, node_agent, settings, tmp_path
):
    """Granite 4 (Mamba-2 layers around one attention layer) and Mamba-2 alone: vLLM CPU keeps their per-sequence state
    where a dense model grows a KV cache."""
    _, agent_log = node_agent
    team = Team.objects.get(slug="support-ai")
    version = _import_tiny(
        family, f"tiny-{family}".replace("_", "-"), actor_for(org["engineer"]), team, settings, tmp_path
    )
    facts = version.architecture_facts
    assert (facts["state_layers"], facts["attention_layers"]) == (state_layers, attention_layers)

    with _served(org, team, version, "stateful", agent_log, tmp_path) as (sdk, log):
        answer = sdk.chat.completions.create(
            model="stateful",
            messages=[{"role": "user", "content": "Route this ticket: my parcel never arrived."}],
            max_tokens=6,
            temperature=0,
        )
        assert answer.model == "stateful" and answer.usage.completion_tokens == 6
        _metered("stateful", answer, log)
