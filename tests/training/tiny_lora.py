"""A tiny Llama with random weights and a random LoRA adapter on it (a few hundred KB, made in a second):
real files for merging tests, where what matters is the arithmetic, not what the model knows."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 96
# Fixed prompts as token ids: the comparisons decode from each greedily.
PROMPTS = [[1, 5, 9, 13], [2, 40, 41], [7, 7, 7, 7, 7, 7], [90, 3, 60, 25, 11]]


def make_base(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    # A tokenizer file stands for the base's tokenizer: the merged version must carry it.
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    return folder


def make_adapter(base_dir: Path, folder: Path, *, seed: int = 1, rank: int = 4) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # large enough that the adapter changes what is decoded
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def greedy(model, prompts=PROMPTS, new_tokens: int = 8) -> list[list[int]]:
    import torch

    answers = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            answers.append(out[0, len(prompt) :].tolist())
    return answers
