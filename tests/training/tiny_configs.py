"""Tiny ``transformers`` configs of each family a fine-tune meets: built on the meta device to read their
layers, or with random weights to train a few steps.

The architectures ``make_tiny_model`` builds come from ``portfolio.registry.tiny_models``; the others a
fine-tune must also read (more experts, state-space and hybrid layouts, LLaVA) are made here of the same
text layers and vision tower. ``vocab_size`` is a parameter: a model trained with SmolLM2's tokenizer needs
its 49,152 tokens.
"""

from __future__ import annotations

from typing import Any

from portfolio.registry import tiny_models
from portfolio.registry.tiny_models import HEAD_DIM, HIDDEN, VISION, text_layers

SMALL = 128  # the vocabulary of a config only read, never trained


def config(architecture: str, vocab_size: int = SMALL) -> Any:
    """The tiny config of ``architecture``: the registry's own, or one of the architectures below."""
    if architecture in tiny_models.BUILDERS:
        return tiny_models.config(architecture, vocab_size)
    return OTHER_ARCHITECTURES[architecture](vocab_size)


def _gpt_oss(vocab_size: int):
    from transformers import GptOssConfig

    return GptOssConfig(**text_layers(vocab_size), num_local_experts=4, num_experts_per_tok=2)


def _qwen2_moe(vocab_size: int):
    """A mixture of experts with a shared expert (a dense MLP every token goes through)."""
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **text_layers(vocab_size),
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
    )


def _mamba(vocab_size: int):
    from transformers import MambaConfig

    return MambaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, state_size=16, num_hidden_layers=2, expand=2
    )


def _jamba(vocab_size: int):
    """Attention every other layer, Mamba in the rest, experts in every other MLP."""
    from transformers import JambaConfig

    return JambaConfig(
        **text_layers(vocab_size, head_dim=False),
        num_experts=4,
        num_experts_per_tok=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    )


def _falcon_h1(vocab_size: int):
    """Attention and Mamba-2 side by side in every layer."""
    from transformers import FalconH1Config

    return FalconH1Config(
        **text_layers(vocab_size),
        mamba_d_ssm=4 * HEAD_DIM,
        mamba_n_heads=4,
        mamba_d_head=HEAD_DIM,
        mamba_d_state=16,
        mamba_n_groups=1,
        mamba_chunk_size=16,
    )


def _lfm2(vocab_size: int):
    """LFM2: short convolutions and attention, whose output projections share the name ``out_proj``."""
    from transformers import Lfm2Config

    return Lfm2Config(**text_layers(vocab_size, head_dim=False), layer_types=["conv", "full_attention"])


def _llava(vocab_size: int):
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config={"model_type": "llama", **text_layers(vocab_size)},
        vision_config={"model_type": "clip_vision_model", **VISION, "projection_dim": 32},
    )


OTHER_ARCHITECTURES = {
    "gpt_oss": _gpt_oss,
    "qwen2_moe": _qwen2_moe,
    "mamba": _mamba,
    "jamba": _jamba,
    "falcon_h1": _falcon_h1,
    "lfm2": _lfm2,
    "llava": _llava,
}
