"""Model families end to end with real processes: a tiny random-weight model of the family (built by
``registry.tiny_models``) is imported from a folder, registered with its architecture facts, deployed by a
Celery node agent as a real vLLM CPU engine, and called through the gateway with the official openai SDK.
Eager mode (no graph compilation) keeps each engine's start short. Random weights answer nonsense: what is
proven is that the family's path works and the tokens flow and are metered."""

from __future__ import annotations

import base64
import struct
import time
import zlib

import pytest

from portfolio.accounts.models import Team
from portfolio.registry.choices import Family
from tests.conftest import actor_for
from tests.e2e.agent import wait
from tests.e2e.platform_path import import_tiny, served

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


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
    version = import_tiny(Family.MOE, "tiny-moe", actor_for(org["engineer"]), team, settings, tmp_path)
    facts = version.architecture_facts
    assert (facts["experts"], facts["experts_per_token"]) == (4, 2)
    assert facts["active_parameters"] < facts["total_parameters"] == version.parameter_count

    with served(org, team, version, "experts", agent_log, tmp_path) as (sdk, log):
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
    version = import_tiny(
        Family.VISION_LANGUAGE, "tiny-vlm", actor_for(org["engineer"]), team, settings, tmp_path
    )
    assert version.architecture_facts["vision"]["parameters"] > 0

    image = "data:image/png;base64," + base64.b64encode(_png(64, 64, (200, 30, 30))).decode()
    with served(org, team, version, "vision", agent_log, tmp_path) as (sdk, log):
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
    version = import_tiny(
        family, f"tiny-{family}".replace("_", "-"), actor_for(org["engineer"]), team, settings, tmp_path
    )
    facts = version.architecture_facts
    assert (facts["state_layers"], facts["attention_layers"]) == (state_layers, attention_layers)

    with served(org, team, version, "stateful", agent_log, tmp_path) as (sdk, log):
        answer = sdk.chat.completions.create(
            model="stateful",
            messages=[{"role": "user", "content": "Route this ticket: my parcel never arrived."}],
            max_tokens=6,
            temperature=0,
        )
        assert answer.model == "stateful" and answer.usage.completion_tokens == 6
        _metered("stateful", answer, log)
