"""Tiny ``transformers`` configs of each family a fine-tune meets (a few thousand parameters each): built on
the meta device to read their layers, or with random weights to train a few steps.

``vocab_size`` is a parameter: a model trained with SmolLM2's tokenizer needs its 49,152 tokens.
"""

from __future__ import annotations

from typing import Any

SMALL = 128  # the vocabulary of a config only read, never trained


def _text(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "max_position_embeddings": 256,
    }


def llama(vocab_size: int = SMALL):
    from transformers import LlamaConfig

    return LlamaConfig(**_text(vocab_size))


def qwen3_moe(vocab_size: int = SMALL):
    """Qwen3-MoE (as Qwen3.5-35B-A3B): 4 experts, 2 per token, experts fused into 3-D weights."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**_text(vocab_size), moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2)


def gpt_oss(vocab_size: int = SMALL):
    from transformers import GptOssConfig

    return GptOssConfig(**_text(vocab_size), num_local_experts=4, num_experts_per_tok=2)


def qwen2_moe(vocab_size: int = SMALL):
    """A mixture of experts with a shared expert (a dense MLP every token goes through)."""
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **_text(vocab_size),
        moe_intermediate_size=8,
        shared_expert_intermediate_size=8,
        num_experts=4,
        num_experts_per_tok=2,
    )


def mamba(vocab_size: int = SMALL):
    from transformers import MambaConfig

    return MambaConfig(vocab_size=vocab_size, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2)


def mamba2(vocab_size: int = SMALL):
    from transformers import Mamba2Config

    return Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        num_heads=4,
        head_dim=8,
        n_groups=1,
    )


def jamba(vocab_size: int = SMALL):
    """Attention every other layer, Mamba in the rest, experts in every other MLP."""
    from transformers import JambaConfig

    text = _text(vocab_size)
    del text["head_dim"]
    return JambaConfig(
        **text,
        num_experts=4,
        num_experts_per_tok=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    )


def falcon_h1(vocab_size: int = SMALL):
    """Attention and Mamba-2 side by side in every layer."""
    from transformers import FalconH1Config

    return FalconH1Config(
        **_text(vocab_size),
        mamba_d_ssm=32,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_state=4,
        mamba_n_groups=1,
        mamba_chunk_size=16,
    )


def granite4(vocab_size: int = SMALL):
    """Granite 4 (GraniteMoeHybrid): a Mamba-2 layer then an attention layer, experts and a shared MLP."""
    from transformers import GraniteMoeHybridConfig

    text = _text(vocab_size)
    del text["head_dim"]
    return GraniteMoeHybridConfig(
        **text,
        num_local_experts=4,
        num_experts_per_tok=2,
        shared_intermediate_size=16,
        layer_types=["mamba", "attention"],
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_state=4,
        mamba_n_groups=1,
        mamba_expand=2,
    )


def lfm2(vocab_size: int = SMALL):
    """LFM2: short convolutions and attention, whose output projections share the name ``out_proj``."""
    from transformers import Lfm2Config

    text = _text(vocab_size)
    del text["head_dim"]
    return Lfm2Config(**text, layer_types=["conv", "full_attention"])


def gemma3_vision(vocab_size: int = SMALL):
    """Gemma 3 with its SigLIP vision tower (whose attention is named as the language model's: q_proj)."""
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config=_text(vocab_size),
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
    )


def llava(vocab_size: int = SMALL):
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config={"model_type": "llama", **_text(vocab_size)},
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "projection_dim": 16,
        },
    )


def whisper(vocab_size: int = SMALL):
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        begin_suppress_tokens=[],
        suppress_tokens=[],
    )
