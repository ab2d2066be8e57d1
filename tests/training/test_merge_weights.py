"""An adapter merged into its base (peft merge_and_unload) answers as the adapter served dynamically."""

from __future__ import annotations

import json

import pytest

from tests.training.tiny_lora import PROMPTS, greedy, make_adapter, make_base
from training.merges.weights import merge_directory


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = make_base(root / "base")
    adapter = make_adapter(base, root / "adapter")
    merge_directory(base, adapter, root / "merged")
    return base, adapter, root / "merged"


def test_the_merged_version_is_a_full_model_in_safetensors_with_the_base_tokenizer(merged):
    base, _, out = merged
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names
    assert "adapter_config.json" not in names
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"model_max_length": 128}
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_merged_answers_equal_the_dynamic_adapters_on_greedy_decoding(merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir, out = merged
    dynamic = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir
    ).eval()
    full = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            torch.testing.assert_close(full(ids).logits, dynamic(ids).logits, atol=1e-4, rtol=1e-4)
    answers = greedy(full)
    assert answers == greedy(dynamic)
    # The adapter matters: without it (a merge that dropped it) the answers differ.
    assert answers != greedy(plain)
