"""What admission reserves for media: an upload's worst case in decoder tokens and money (audio.py), and an
image's tokens from the model behind the endpoint (images.py, carried in the routing table)."""

from __future__ import annotations

import pytest

from serving.gateway import audio, intake, payloads
from serving.gateway.images import IMAGE_MARKER_TOKENS, tokens_per_image
from serving.gateway.payloads import CHAT_TEMPLATE_TOKENS, SPECIAL_TOKENS
from serving.gateway.routing import EndpointInfo, _read_snapshot
from serving.models import Endpoint

WINDOW_MS, OVERLAP_MS = 30_000, 1_000


def hop(**fields) -> EndpointInfo:
    base = {
        "name": "whisper",
        "team_id": 1,
        "routes": (),
        "fallback": None,
        "input_micros_per_token": 0.0,
        "output_micros_per_token": 0.0,
        "max_model_len": 2048,
        "serves": "speech",
    }
    return EndpointInfo(**(base | fields))


# --- Audio: the decoder's worst case -------------------------------------------------------------------
def engine_chunks(audio_ms: int, cut_at_ms: int) -> int:
    """How many sequences vLLM 0.32 decodes (speech_to_text._split_audio) when every cut falls ``cut_at_ms``
    into its window's overlap (0: the earliest point, most chunks)."""
    if audio_ms <= WINDOW_MS:
        return 1
    count, start = 0, 0
    while start < audio_ms:
        count += 1
        if start + WINDOW_MS >= audio_ms:
            break
        start += WINDOW_MS - OVERLAP_MS + cut_at_ms
    return count


@pytest.mark.parametrize("cut_at_ms", [0, 500, 999])
def test_an_upload_never_takes_more_chunks_than_the_bound_counts(cut_at_ms):
    for audio_ms in [
        1,
        29_999,
        30_000,
        30_001,
        58_000,
        58_001,
        59_000,
        87_001,
        600_000,
        *range(1, 700_000, 997),
    ]:
        assert audio.chunks(audio_ms) >= engine_chunks(audio_ms, cut_at_ms), audio_ms


def test_an_upload_reserves_the_decoders_limit_per_chunk_and_its_seconds_and_tokens_in_money():
    whisper = hop(
        decoder_len=448, audio_micros_per_second=10_000, input_micros_per_token=3, output_micros_per_token=5
    )
    tokens, money = audio.reservation(whisper, 10_000)
    assert tokens == 10 * 50 + 448, "the seconds as tokens; one chunk: a prompt and a transcript to the limit"
    assert money == 10 * 10_000 + 448 * 5, "the seconds, and the dearest way to spend the decoder's tokens"
    tokens, money = audio.reservation(whisper, 90_000)
    assert tokens == 90 * 50 + 4 * 448 and money == 90 * 10_000 + 4 * 448 * 5


def test_an_uploads_seconds_count_as_fifty_tokens_each_a_started_position_whole():
    assert [payloads.audio_tokens(ms) for ms in (0, 1, 20, 21, 1_000, 29_999)] == [0, 1, 1, 2, 50, 1_500]


def test_a_prompt_dearer_than_the_transcript_is_reserved_at_its_price():
    whisper = hop(decoder_len=100, input_micros_per_token=7, output_micros_per_token=1)
    tokens, money = audio.reservation(whisper, 1_000, prompt="x" * 40)
    assert tokens == 50 + 100
    assert money == (40 + SPECIAL_TOKENS) * 7 + (100 - 40 - SPECIAL_TOKENS) * 1


def test_without_a_known_decoder_limit_the_context_bounds_a_chunk():
    assert audio.reservation(hop(max_model_len=512), 5_000) == (250 + 512, 0)


# --- Images: the model's figure ------------------------------------------------------------------------
GEMMA3 = "Gemma3ForConditionalGeneration"


def test_a_model_that_makes_every_image_one_tile_reserves_its_own_figure():
    assert tokens_per_image(GEMMA3, {"vision": {"tokens_per_image": 256}}, 2048) == 256 + IMAGE_MARKER_TOKENS
    assert (
        tokens_per_image(GEMMA3, {"vision": {"tokens_per_image": 4096}}, 2048) == 4096 + IMAGE_MARKER_TOKENS
    )


def test_a_model_that_tiles_or_is_not_known_keeps_the_fixed_bound_or_its_larger_figure():
    tiles = "Idefics3ForConditionalGeneration"
    assert tokens_per_image(tiles, {"vision": {"tokens_per_image": 64}}, 2048) == 2048, "64 is one tile's"
    assert tokens_per_image(tiles, {"vision": {"tokens_per_image": 4000}}, 2048) == 4000 + IMAGE_MARKER_TOKENS
    assert tokens_per_image(GEMMA3, {}, 2048) == 2048
    assert tokens_per_image(GEMMA3, {"vision": {"tokens_per_image": 0}}, 2048) == 2048
    assert tokens_per_image(GEMMA3, {"vision": {"tokens_per_image": True}}, 2048) == 2048
    assert tokens_per_image("", {"vision": "junk"}, 2048) == 2048


GIF_1X1 = "data:image/gif;base64,R0lGODlhAQABAAAAADs="  # a 1 x 1 logical screen: its size is readable


def _image_call(images: int) -> tuple[dict, int]:
    parts: list[dict] = [{"type": "text", "text": "What is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": GIF_1X1}}] * images
    payload = {"model": "vision", "messages": [{"role": "user", "content": parts}], "max_tokens": 4}
    return payload, len(str(payload).encode())


def test_the_prompt_reserves_the_endpoints_figure_per_image_and_the_fixed_bound_when_unknown(settings):
    settings.GATEWAY_IMAGE_TOKENS = 1000
    payload, size = _image_call(2)
    urls = 2 * len(GIF_1X1)
    known = intake.check("chat", payload, size, hop(serves="text", image_tokens=300), "vision")
    assert known.prompts == (size + CHAT_TEMPLATE_TOKENS - urls + 2 * 300,)
    unknown = intake.check("chat", payload, size, hop(serves="text"), "vision")
    assert unknown.prompts == (size + CHAT_TEMPLATE_TOKENS - urls + 2 * 1000,)


def test_without_a_configured_bound_an_image_of_unknown_cost_may_fill_the_context():
    """The default: nothing caps what a tiling model makes of one image (Idefics3 at its largest size, 17
    tiles of 169 tokens; Qwen2-VL by its pixels) but the context, so that is what admission reserves."""
    payload, size = _image_call(1)
    shape = intake.check("chat", payload, size, hop(serves="text", max_model_len=8192), "vision")
    assert shape.prompts[0] >= 8192


# --- The routing table carries the figures ----------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_routing_table_carries_each_models_image_and_decoder_figures(stack, settings):
    settings.GATEWAY_IMAGE_TOKENS = 1000

    def deployment(name: str, task: str, architecture: str, facts: dict, max_model_len: int = 512):
        dep, _ = stack["deployment"](name, task=task)
        dep.engine_args = {"max_model_len": max_model_len}
        dep.save(update_fields=["engine_args"])
        dep.version.architecture, dep.version.architecture_facts = architecture, facts
        dep.version.save(update_fields=["architecture", "architecture_facts"])
        return dep

    gemma = deployment("gemma-dep", "chat", GEMMA3, {"vision": {"tokens_per_image": 256}})
    smol = deployment(
        "smol-dep", "chat", "Idefics3ForConditionalGeneration", {"vision": {"tokens_per_image": 64}}
    )
    whisper = deployment(
        "whisper-dep", "speech", "WhisperForConditionalGeneration", {"max_target_positions": 448}
    )
    long_whisper = deployment("long-dep", "speech", "WhisperForConditionalGeneration", {}, max_model_len=1024)
    smol_ep = stack["endpoint"]("smol", smol)
    stack["endpoint"]("gemma", gemma)
    stack["endpoint"]("gemma-or-smol", gemma, fallback=smol_ep)
    stack["endpoint"]("whisper", whisper)
    stack["endpoint"]("long-whisper", long_whisper)
    router = Endpoint.objects.create(
        name="router",
        owner_team=gemma.owner_team,
        kind="router",
        config={"classifier": "gemma", "routes": {"a": "gemma"}, "default": "smol"},
    )

    table = _read_snapshot().endpoints
    assert table["gemma"].image_tokens == 256 + IMAGE_MARKER_TOKENS, "the model's own figure, below the fixed"
    assert table["smol"].image_tokens == 1000, "a tiling model's figure is a tile's: the fixed bound stays"
    assert table["gemma-or-smol"].image_tokens == 1000, "reserved for the costliest model it may reach"
    assert table[router.name].image_tokens == 1000, "a composite's hops count"
    assert table["whisper"].decoder_len == 448, "Whisper's decoder limit, below the context configured"
    assert table["long-whisper"].decoder_len == 1024


@pytest.mark.django_db(transaction=True)
def test_by_default_a_tiling_models_image_reserves_its_context_not_a_fixed_figure(stack, settings):
    """Idefics3-8B makes an image of its largest size into 17 tiles of 169 tokens (2,873): above the 2,048
    that used to be reserved whatever the model, so a key's limits could be overrun by what was not
    reserved. Unless an operator configures a bound (having capped the engines' image size), an image on a
    model whose figure is a tile's, or unknown, may cost up to the deployment's context."""
    assert settings.GATEWAY_IMAGE_TOKENS == 0, "the shipped default"
    smol, _ = stack["deployment"]("idefics-dep", task="chat")
    smol.engine_args = {"max_model_len": 8192}
    smol.save(update_fields=["engine_args"])
    smol.version.architecture = "Idefics3ForConditionalGeneration"
    smol.version.architecture_facts = {"vision": {"tokens_per_image": 169}}
    smol.version.save(update_fields=["architecture", "architecture_facts"])
    gemma, _ = stack["deployment"]("gemma-dep", task="chat")
    gemma.engine_args = {"max_model_len": 8192}
    gemma.save(update_fields=["engine_args"])
    gemma.version.architecture, gemma.version.architecture_facts = (
        GEMMA3,
        {"vision": {"tokens_per_image": 256}},
    )
    gemma.version.save(update_fields=["architecture", "architecture_facts"])
    stack["endpoint"]("idefics", smol)
    stack["endpoint"]("gemma", gemma)

    table = _read_snapshot().endpoints
    assert table["idefics"].image_tokens == 8192, "a tile's figure bounds nothing: the context does"
    assert table["gemma"].image_tokens == 256 + IMAGE_MARKER_TOKENS, "one tile per image: its own figure"
