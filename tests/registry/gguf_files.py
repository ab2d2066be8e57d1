"""Tiny real GGUF files for tests, written with the ``gguf`` package (the library llama.cpp's own
converters use): a 1-layer Llama with random weights and a sentencepiece vocabulary small enough that
the ids a prompt must encode to can be worked out by hand.

The vocabulary holds both ``▁hi`` and ``hi`` so that whether a space is prefixed shows in the ids, and
byte tokens are left out so that nothing falls back silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Token types as GGUF numbers them (llama.cpp's llama_token_type).
NORMAL, CONTROL = 1, 3
UNK, BOS, EOS, PAD, EOT = 0, 1, 2, 3, 4
TOKENS = [
    ("<unk>", 2),
    ("<s>", CONTROL),
    ("</s>", CONTROL),
    ("<pad>", CONTROL),
    ("<|im_end|>", CONTROL),
    ("▁", NORMAL),
    ("h", NORMAL),
    ("i", NORMAL),
    ("t", NORMAL),
    ("e", NORMAL),
    ("▁h", NORMAL),
    ("▁hi", NORMAL),
    ("hi", NORMAL),
    ("▁t", NORMAL),
    ("▁th", NORMAL),
    ("th", NORMAL),
    ("▁the", NORMAL),
    ("he", NORMAL),
]
ID = {token: index for index, (token, _) in enumerate(TOKENS)}
HIDDEN, LAYERS, HEADS, FFN = 16, 1, 2, 32

# What llama.cpp makes of "hi the": a prefixed space when the file says so, then the longest pieces.
PROMPT = "hi the"
PROMPT_IDS_WITH_PREFIX = [ID["▁hi"], ID["▁the"]]
PROMPT_IDS_WITHOUT_PREFIX = [ID["hi"], ID["▁the"]]


def write_tiny_gguf(
    path: Path,
    *,
    add_bos: bool | None = True,
    add_eos: bool | None = False,
    add_space_prefix: bool | None = None,
    chat_template: str | None = None,
    named_templates: dict[str, str] | None = None,
    eot: bool = False,
) -> Path:
    """A GGUF that transformers and vLLM load as a Llama; ``None`` leaves a flag out of the file."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in TOKENS])
    # Longer pieces score higher, so the merges rebuilt from the vocabulary prefer them.
    writer.add_token_scores([float(len(token)) for token, _ in TOKENS])
    writer.add_token_types([kind for _, kind in TOKENS])
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_pad_token_id(PAD)
    if eot:
        writer.add_eot_token_id(EOT)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if add_eos is not None:
        writer.add_add_eos_token(add_eos)
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)
    if chat_template is not None or named_templates:
        templates: list | str = chat_template or ""
        if named_templates:
            templates = [{"name": "default", "template": chat_template or ""}] + [
                {"name": name, "template": text} for name, text in named_templates.items()
            ]
        writer.add_chat_template(templates)

    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.02)

    tensor("token_embd.weight", len(TOKENS), HIDDEN)
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"{block}.{name}.weight", HIDDEN, HIDDEN)
        tensor(f"{block}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"{block}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"{block}.ffn_down.weight", HIDDEN, FFN)
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    tensor("output.weight", len(TOKENS), HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
