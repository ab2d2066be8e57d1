"""The training defaults: epochs, learning rate, LoRA rank and target modules chosen from the number of
training rows and the base's architecture (a pure rule), and the architecture read from a base's config."""

from __future__ import annotations

import pytest

from training import finetune
from training.choices import Method
from training.defaults import Architecture, Hyperparameters, epochs_for, learning_rate_for, target_modules_for

LLAMA = Architecture(
    "llama",
    135_000_000,
    frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
)
LLAMA_8B = Architecture("llama", 8_000_000_000, LLAMA.linear_modules)
PHI3_MINI = Architecture(
    "phi3", 3_800_000_000, frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})
)
GPT2 = Architecture("gpt2", 124_000_000, frozenset({"c_attn", "c_proj", "c_fc"}))
NEOX = Architecture(
    "gpt_neox", 410_000_000, frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"})
)


def test_a_small_set_on_a_small_llama_trains_attention_and_mlp_at_rank_8_for_several_epochs():
    hp = Hyperparameters().resolved(60, LLAMA)
    assert hp.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (hp.lora_r, hp.lora_alpha) == (8, 16)
    assert hp.epochs == 3 and hp.learning_rate == 2e-3
    assert hp.early_stopping_patience == 2


def test_a_big_base_with_few_rows_adapts_only_its_attention_and_learns_more_slowly():
    hp = Hyperparameters().resolved(60, LLAMA_8B)
    assert hp.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert hp.learning_rate == 1e-3


def test_a_big_base_with_many_rows_also_adapts_its_mlp_at_rank_16():
    hp = Hyperparameters().resolved(5_000, LLAMA_8B)
    assert hp.target_modules[-3:] == ["gate_proj", "up_proj", "down_proj"]
    assert (hp.lora_r, hp.lora_alpha, hp.epochs) == (16, 32, 2)


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        (PHI3_MINI, ["qkv_proj", "o_proj"]),
        (GPT2, ["c_attn", "c_fc", "c_proj"]),
        (NEOX, ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    ],
)
def test_target_modules_are_names_the_architecture_has(architecture, expected):
    chosen = target_modules_for(architecture, 60)
    assert chosen == expected
    assert set(chosen) <= architecture.linear_modules


def test_an_unknown_architecture_or_none_gets_the_attention_projections_as_before():
    assert target_modules_for(None, 60) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    odd = Architecture("odd", 10_000_000, frozenset({"mixer", "gate"}))
    assert target_modules_for(odd, 60) == ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.mark.parametrize(
    ("rows", "epochs"), [(1, 10), (16, 10), (60, 3), (72, 3), (100, 2), (5_000, 2), (200_000, 1)]
)
def test_epochs_fall_as_rows_grow(rows, epochs):
    assert epochs_for(rows) == epochs


def test_learning_rate_falls_with_rows_and_base_size_and_full_fine_tuning_stays_low():
    rates = [learning_rate_for("lora", rows, 135_000_000) for rows in (60, 5_000, 50_000)]
    assert rates == [2e-3, 1e-3, 5e-4]
    assert learning_rate_for("qlora", 60, 70_000_000_000) == 5e-4
    assert learning_rate_for("full", 60, 135_000_000) == 2e-5
    assert learning_rate_for("lora", 60, None) == 2e-3


def test_values_set_explicitly_are_kept():
    hp = Hyperparameters(epochs=1, learning_rate=1e-4, lora_r=4, lora_alpha=4, target_modules=["q_proj"])
    assert hp.resolved(60, LLAMA) == hp


def test_a_job_stores_the_automatic_lora_settings_only_once_its_run_chose_them():
    stored = finetune._hyperparameters({"epochs": 3}, Method.LORA)
    assert "lora_r" not in stored and "target_modules" not in stored and stored["epochs"] == 3
    assert finetune._hyperparameters({"lora_r": 16}, Method.LORA)["lora_r"] == 16
    assert (
        finetune._hyperparameters({"early_stopping_patience": 0}, Method.LORA)["early_stopping_patience"] == 0
    )


def test_architecture_is_read_from_the_config_without_loading_weights(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).save_pretrained(tmp_path)  # a config only: there are no weights to read
    architecture = Architecture.read(tmp_path)
    assert architecture.model_type == "llama"
    assert architecture.linear_modules == LLAMA.linear_modules
    assert 0 < architecture.parameters < 100_000


def test_a_base_whose_config_transformers_cannot_build_gets_the_default_modules(tmp_path):
    from training.defaults import architecture_of

    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert architecture_of(tmp_path) is None
    assert Hyperparameters().resolved(60, architecture_of(tmp_path)).target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]
