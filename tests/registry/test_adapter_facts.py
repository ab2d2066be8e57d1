"""An adapter's import records what a deployment asks before serving it (``serving.adapter_checks``): its ranks
and the PEFT features vLLM refuses to load. Found by review: only ``r`` (and five other keys) were recorded, so
an adapter with a larger ``rank_pattern``, or a DoRA one, could not be told from one vLLM serves."""

from __future__ import annotations

import json

from portfolio.registry.inspection import inspect_directory
from tests.registry.conftest import make_adapter_folder

# As PEFT writes them (peft 0.17's LoraConfig), with the features vLLM refuses set.
REFUSED_FEATURES = {
    "rank_pattern": {"q_proj": 64},
    "use_dora": True,
    "lora_bias": True,
    "bias": "lora_only",
    "modules_to_save": ["lm_head"],
    "init_lora_weights": "pissa",
    "alora_invocation_tokens": [12, 13],
    "layer_replication": [[0, 2], [1, 2]],
    "use_bdlora": {"lora_a_is_blockdiagonal": True},
    "use_qalora": True,
}


def test_an_adapters_ranks_and_the_features_vllm_refuses_are_recorded(tmp_path):
    folder = make_adapter_folder(tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    extra = {"alpha_pattern": {}, "use_rslora": False, "lora_dropout": 0.05, "revision": None}
    (folder / "adapter_config.json").write_text(json.dumps({**config, **REFUSED_FEATURES, **extra}))
    facts = inspect_directory(folder)
    assert facts.adapter == {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "tiny",
        **REFUSED_FEATURES,
    }


def test_a_key_the_config_does_not_have_is_not_recorded(tmp_path):
    """A version recorded without a key is served as vLLM's default for it says (no DoRA, no bias, ...)."""
    facts = inspect_directory(make_adapter_folder(tmp_path / "adapter"))
    assert set(facts.adapter) == {"peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path"}
