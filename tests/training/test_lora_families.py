"""A real LoRA run of a few steps on tiny random-weight models of the families beyond dense decoders: a
mixture of experts with its experts' fused projections adapted (peft's target_parameters), a Mamba model
(state-space projections) and a hybrid (attention and Mamba layers side by side)."""

from __future__ import annotations

import json
import shutil

from safetensors import safe_open

from tests.training import tiny_configs
from training import lora
from training.defaults import Architecture, Hyperparameters


def tiny_model(tokenizer_dir, folder, config):
    """``config`` with random weights and SmolLM2's tokenizer (its 49,152 tokens), saved as safetensors."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(tokenizer_dir, folder)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def ticket(i: int, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Ticket {i}"}, {"role": "assistant", "content": answer}]
    }


def train_few_steps(base, out, hp: Hyperparameters) -> dict:
    rows = [ticket(i, ["billing", "shipping"][i % 2]) for i in range(8)]
    return lora.train(base_dir=base, output_dir=out, train_rows=rows, eval_rows=rows[:2], hp=hp)


def adapted(out) -> set[str]:
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        return set(weights.keys())


def test_a_mixture_of_experts_trains_adapters_on_its_attention_and_its_experts(
    smollm2_tokenizer_dir, tmp_path
):
    base = tiny_model(smollm2_tokenizer_dir, tmp_path / "moe", tiny_configs.config("qwen3_moe", 49152))
    architecture = Architecture.read(base)
    assert architecture.family == "moe"
    hp = Hyperparameters(
        epochs=2,
        learning_rate=1e-2,
        checkpoint_every=0,
        early_stopping_patience=0,
        lora_targets="attention+experts",
    ).resolved(8, architecture)
    assert hp.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "experts.gate_up_proj",
        "experts.down_proj",
    ]
    metrics = train_few_steps(base, tmp_path / "out", hp)
    assert metrics["steps_trained"] == 4
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    keys = adapted(tmp_path / "out")
    assert any(".mlp.experts.lora_A" in key for key in keys)
    assert any(".self_attn.q_proj.lora_A" in key for key in keys)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sorted(config["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]
    assert config["lora_dropout"] == 0.0  # peft adapts fused expert weights only without dropout


def test_a_mamba_model_trains_adapters_on_its_state_space_projections(smollm2_tokenizer_dir, tmp_path):
    base = tiny_model(smollm2_tokenizer_dir, tmp_path / "mamba", tiny_configs.config("mamba", 49152))
    hp = Hyperparameters(
        epochs=2, learning_rate=1e-2, checkpoint_every=0, early_stopping_patience=0
    ).resolved(8, Architecture.read(base))
    assert hp.target_modules == ["in_proj", "x_proj", "dt_proj"]
    metrics = train_few_steps(base, tmp_path / "out", hp)
    assert metrics["steps_trained"] == 4 and metrics["train_loss_last"] < metrics["train_loss_first"]
    layers = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in adapted(tmp_path / "out")}
    assert layers == {"in_proj", "x_proj", "dt_proj"}


def test_a_hybrid_trains_adapters_on_its_attention_and_its_mamba_layers(smollm2_tokenizer_dir, tmp_path):
    base = tiny_model(smollm2_tokenizer_dir, tmp_path / "hybrid", tiny_configs.config("falcon_h1", 49152))
    hp = Hyperparameters(
        epochs=2, learning_rate=1e-2, checkpoint_every=0, early_stopping_patience=0
    ).resolved(8, Architecture.read(base))
    assert hp.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj"]
    metrics = train_few_steps(base, tmp_path / "out", hp)
    assert metrics["steps_trained"] == 4
    keys = adapted(tmp_path / "out")
    assert any(".mamba.in_proj.lora_A" in key for key in keys)
    assert any(".self_attn.o_proj.lora_A" in key for key in keys)
    assert not any("feed_forward" in key for key in keys)


def test_a_vision_language_model_trains_adapters_on_its_language_model_only(smollm2_tokenizer_dir, tmp_path):
    base = tiny_model(smollm2_tokenizer_dir, tmp_path / "vlm", tiny_configs.config("gemma3", 49152))
    hp = Hyperparameters(
        epochs=1, learning_rate=1e-2, checkpoint_every=0, early_stopping_patience=0, lora_targets="attention"
    ).resolved(8, Architecture.read(base))
    metrics = train_few_steps(base, tmp_path / "out", hp)
    assert metrics["steps_trained"] == 2
    keys = adapted(tmp_path / "out")
    assert any("language_model" in key for key in keys)
    assert not any("vision_tower" in key for key in keys)  # its q_proj/k_proj/v_proj are left as they are
