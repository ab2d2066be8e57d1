"""What kind of model a config describes, with the facts serving needs for each kind.

A dense decoder, a mixture of experts (all experts resident, a few active per token), a state-space or
hybrid model (some layers keep a fixed-size state per sequence instead of a KV cache that grows with it),
a vision-language model (a vision tower in front of a decoder) or a speech encoder-decoder (Whisper). Read
from ``config.json`` and the safetensors headers as data: nothing here imports a model class or runs code,
so an architecture the installed ``transformers`` does not know is still read as far as its config says.
"""

from __future__ import annotations

import re

from portfolio.registry.choices import Family

# Per-layer kinds, as configs name them (``layer_types``, ``layers_block_type``): anything that keeps a
# fixed state (Mamba, linear attention, short convolutions) versus attention that keeps a KV cache.
STATE_WORDS = ("mamba", "linear", "conv", "ssm", "recurrent", "rwkv", "state")
STATE_SPACE_TYPES = ("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm")
# Both in every layer, side by side (Falcon-H1's parallel attention and Mamba heads).
PARALLEL_HYBRID_TYPES = ("falcon_h1",)
MAMBA1_TYPES = ("mamba", "falcon_mamba", "jamba")
# Tensors that hold experts: one per expert (``.experts.3.``), stacked (``.experts.gate_up_proj``), or
# Granite's stacked ``block_sparse_moe.input_linear``. Shared experts are always active and not matched.
EXPERT_TENSOR = re.compile(r"\.experts\.|block_sparse_moe\.(input|output)_linear")
VISION_TENSOR = re.compile(
    r"(^|\.)(vision_tower|vision_model|visual|multi_modal_projector|mm_projector|connector)\."
)


# More decoder layers than any model has (the largest hybrids have a few hundred blocks): a config saying
# 2,000,000,000 would have the import build lists of that length, in the worker every team's imports share.
MAX_LAYERS = 1024


def _int(config: dict, *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def text_config(config: dict) -> dict:
    """The decoder's settings: nested under ``text_config`` in vision-language configs."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) and nested.get("num_hidden_layers") else config


def _kind_of(name: object) -> str:
    word = str(name).lower()
    if word == "hybrid":  # Zamba: a Mamba layer with the shared attention block in front
        return "both"
    if any(w in word for w in STATE_WORDS):
        return "state"
    if "attention" in word or "attn" in word:
        return "attention"
    return "none"  # an MLP-only layer (Nemotron-H's "-" and "E")


def layer_kinds(text: dict) -> list[str]:
    """Each decoder layer's kind: ``attention``, ``state``, ``both`` or ``none``. ValueError past MAX_LAYERS."""
    n = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    model_type = str(text.get("model_type", ""))
    for key in ("layer_types", "layers_block_type"):
        value = text.get(key)
        # Nemotron-H has no layer count of its own: its list of blocks is the count.
        if isinstance(value, list) and len(value) == (n or len(value)):
            n = len(value)
    if n > MAX_LAYERS:
        raise ValueError(f"config.json: {n:,} layers; a model has at most {MAX_LAYERS:,}")
    for key in ("layer_types", "layers_block_type"):
        value = text.get(key)
        if isinstance(value, list) and len(value) == n:
            return [_kind_of(v) for v in value]
    pattern = text.get("hybrid_override_pattern")
    if isinstance(pattern, str) and len(pattern) == n:
        return [{"M": "state", "*": "attention"}.get(c, "none") for c in pattern]
    period = _int(text, "attn_layer_period")
    if period:
        offset = int(text.get("attn_layer_offset") or 0)
        return ["attention" if i % period == offset else "state" for i in range(n)]
    indices = text.get("attn_layer_indices")
    if isinstance(indices, list):
        named = {i for i in indices if isinstance(i, int)}
        return ["attention" if i in named else "state" for i in range(n)]
    if model_type in STATE_SPACE_TYPES:
        return ["state"] * n
    if model_type in PARALLEL_HYBRID_TYPES:
        return ["both"] * n
    return ["attention"] * n


def state_elements_per_layer(text: dict) -> int:
    """Numbers one state layer keeps per sequence (convolution window + recurrent state), whatever its
    length; vLLM keeps them as its "mamba cache" in place of KV blocks."""
    hidden = _int(text, "hidden_size", "d_model")
    if _int(text, "linear_num_value_heads"):  # gated delta net (Qwen3-Next)
        nv, nk = _int(text, "linear_num_value_heads"), _int(text, "linear_num_key_heads")
        dk, dv = _int(text, "linear_key_head_dim"), _int(text, "linear_value_head_dim")
        kernel = _int(text, "linear_conv_kernel_dim") or 4
        return nv * dk * dv + (2 * nk * dk + nv * dv) * (kernel - 1)
    d_state = _int(text, "mamba_d_state", "state_size", "ssm_state_size")
    d_conv = _int(text, "mamba_d_conv", "conv_kernel", "conv_L_cache") or 4
    heads = _int(text, "mamba_n_heads", "mamba_num_heads")
    head_dim = _int(text, "mamba_d_head", "mamba_head_dim")
    d_inner = (
        _int(text, "mamba_d_ssm")
        or heads * head_dim
        or hidden * (_int(text, "mamba_expand", "expand") or (2 if d_state else 1))
    )
    mamba1 = str(text.get("model_type", "")) in MAMBA1_TYPES
    groups = 0 if mamba1 else _int(text, "mamba_n_groups", "n_groups")
    conv = (d_inner + 2 * groups * d_state) * (d_conv - 1)
    return d_inner * d_state + conv


def _expert_parameters(text: dict, tensors: dict[str, list[int]], experts: int, layers: int) -> int:
    counted = sum(_numel(shape) for name, shape in tensors.items() if EXPERT_TENSOR.search(name))
    if counted:
        return counted
    # No weights to read: gated experts of ``moe_intermediate_size`` in every MoE layer.
    hidden = _int(text, "hidden_size")
    width = _int(text, "moe_intermediate_size", "intermediate_size")
    moe_layers = layers
    if _int(text, "expert_layer_period"):
        period, offset = _int(text, "expert_layer_period"), int(text.get("expert_layer_offset") or 0)
        moe_layers = sum(1 for i in range(layers) if i % period == offset)
    elif _int(text, "first_k_dense_replace"):
        moe_layers = max(0, layers - _int(text, "first_k_dense_replace"))
    elif isinstance(text.get("mlp_only_layers"), list):
        moe_layers = layers - len(text["mlp_only_layers"])
    return moe_layers * experts * 3 * hidden * width


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n


def _vision(config: dict, tensors: dict[str, list[int]]) -> dict:
    vision = config["vision_config"]
    size, patch = _int(vision, "image_size"), _int(vision, "patch_size")
    # Idefics3 / SmolVLM merge scale x scale patches into one token (pixel shuffle).
    scale = _int(config, "scale_factor") or 1
    patches = (size // patch) ** 2 if size and patch else 0
    tokens = _int(config, "mm_tokens_per_image", "image_seq_length") or patches // (scale * scale)
    parameters = sum(_numel(shape) for name, shape in tensors.items() if VISION_TENSOR.search(name))
    # A GGUF's vision tower lives in a separate projector file: then the weights hold none of it.
    in_weights = bool(parameters)
    if not parameters:  # no weights to read: a ViT's attention and MLP per layer
        h, width = _int(vision, "hidden_size"), _int(vision, "intermediate_size")
        parameters = _int(vision, "num_hidden_layers", "depth") * (4 * h * h + 2 * h * width)
    return {
        "parameters": parameters,
        "in_weights": in_weights,
        "layers": _int(vision, "num_hidden_layers", "depth"),
        "hidden_size": _int(vision, "hidden_size", "embed_dim"),
        "image_size": size,
        "patch_size": patch,
        "tokens_per_image": tokens,
    }


def read(
    config: dict, tensors: dict[str, list[int]] | None = None, parameter_count: int | None = None
) -> dict:
    """The architecture facts of ``config`` (``tensors``: safetensors names and shapes, when there are
    weights; ``parameter_count``: their total)."""
    tensors = tensors or {}
    if config.get("is_encoder_decoder") and (
        _int(config, "num_mel_bins") or config.get("model_type") == "whisper"
    ):
        decoder_layers = _int(config, "decoder_layers")
        heads = _int(config, "decoder_attention_heads")
        d_model = _int(config, "d_model")
        return {
            "family": Family.SPEECH,
            "layers": decoder_layers,
            "attention_layers": list(range(decoder_layers)),
            "state_layers": [],
            "kv_heads": heads,
            "head_dim": d_model // heads if heads else 0,
            "kv_elements_per_layer": 2 * d_model,
            "encoder_layers": _int(config, "encoder_layers"),
            "decoder_layers": decoder_layers,
            "num_mel_bins": _int(config, "num_mel_bins"),
            # The encoder's output that every decoder layer attends to: a cross-attention KV per sequence.
            "cross_attention_tokens": _int(config, "max_source_positions"),
            "max_target_positions": _int(config, "max_target_positions"),
        }
    text = text_config(config)
    kinds = layer_kinds(text)
    heads = _int(text, "num_attention_heads", "n_head")
    hidden = _int(text, "hidden_size", "d_model")
    facts: dict = {
        "layers": len(kinds),
        "attention_layers": [i for i, k in enumerate(kinds) if k in ("attention", "both")],
        "state_layers": [i for i, k in enumerate(kinds) if k in ("state", "both")],
        "kv_heads": _int(text, "num_key_value_heads") or heads,
        "head_dim": _int(text, "head_dim") or (hidden // heads if heads else 0),
        "hidden_size": hidden,
    }
    # Numbers cached per token in each attention layer: keys and values, or (multi-head latent attention,
    # DeepSeek) one compressed latent and the rotary part of the key.
    if _int(text, "kv_lora_rank"):
        facts["kv_elements_per_layer"] = _int(text, "kv_lora_rank") + _int(text, "qk_rope_head_dim")
    else:
        facts["kv_elements_per_layer"] = 2 * facts["kv_heads"] * facts["head_dim"]
    if facts["state_layers"]:
        facts["state_elements_per_layer"] = state_elements_per_layer(text)
    experts = _int(text, "num_local_experts", "num_experts", "n_routed_experts")
    per_token = _int(text, "num_experts_per_tok", "experts_per_token", "moe_topk")
    if experts > 1 and per_token:
        expert_parameters = _expert_parameters(text, tensors, experts, len(kinds))
        facts |= {"experts": experts, "experts_per_token": per_token, "expert_parameters": expert_parameters}
        if parameter_count:
            idle = expert_parameters * (experts - per_token) // experts
            facts |= {"total_parameters": parameter_count, "active_parameters": parameter_count - idle}
    if isinstance(config.get("vision_config"), dict):
        facts["vision"] = _vision(config, tensors)
        facts["family"] = Family.VISION_LANGUAGE
    elif facts["state_layers"]:
        facts["family"] = Family.HYBRID if facts["attention_layers"] else Family.STATE_SPACE
    elif "experts" in facts:
        facts["family"] = Family.MOE
    else:
        facts["family"] = Family.DENSE
    return facts
