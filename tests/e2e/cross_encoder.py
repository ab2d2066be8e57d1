"""A tiny cross-encoder with random weights (BERT with one relevance logit, about 0.36M parameters), made from
its ``transformers`` config: no cross-encoder weights are on the package registry. Its scores mean nothing;
what it proves is that vLLM serves /v1/rerank and /v1/score for the architecture, in the shapes the gateway
forwards and meters. Head size 64: vLLM's CPU attention takes no smaller head."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "the",
    "a",
    "invoice",
    "was",
    "charged",
    "twice",
    "refund",
    "double",
    "charge",
    "reset",
    "password",
    "app",
    "crashes",
    "on",
    "start",
    "my",
    "card",
]


def build(into: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    into.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted(set(WORDS)),
        *letters,
        *("##" + c for c in letters),
    ]
    (into / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(into / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(into)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(into, safe_serialization=True)
    return into
