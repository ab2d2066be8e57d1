"""Registration reads the architecture: dense, mixture of experts, state-space, hybrid, vision-language and
speech models, from tiny random-weight models of each (built by ``registry.tiny_models``) and from the
configs of real models alone."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from portfolio.registry import families
from portfolio.registry.choices import Family, Source, VersionStatus
from portfolio.registry.inspection import inspect_directory


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


# --- From the tiny models' files -----------------------------------------------------------------
def test_a_dense_model_is_dense_with_attention_in_every_layer(tiny_models):
    facts = inspect_directory(tiny_models["dense"])
    assert facts.family == Family.DENSE
    assert facts.architecture_facts["attention_layers"] == [0, 1]
    assert facts.architecture_facts["state_layers"] == []
    assert "experts" not in facts.architecture_facts


@pytest.mark.parametrize("name", ["moe", "mixtral"])
def test_a_mixture_of_experts_counts_its_experts_and_the_parameters_active_per_token(tiny_models, name):
    facts = inspect_directory(tiny_models[name])
    config = config_of(tiny_models[name])
    moe = facts.architecture_facts
    assert facts.family == Family.MOE
    assert moe["experts"] == 4 and moe["experts_per_token"] == 2
    # Gated experts: gate, up and down projections of hidden x expert width, in each of 2 layers.
    width = config.get("moe_intermediate_size") or config["intermediate_size"]
    per_expert = 3 * config["hidden_size"] * width
    assert moe["expert_parameters"] == 2 * 4 * per_expert
    assert moe["total_parameters"] == facts.parameter_count
    assert moe["active_parameters"] == facts.parameter_count - 2 * (4 - 2) * per_expert


def test_a_state_space_model_keeps_state_in_every_layer_and_no_kv_cache(tiny_models):
    facts = inspect_directory(tiny_models["state_space"])
    arch = facts.architecture_facts
    assert facts.family == Family.STATE_SPACE
    assert arch["state_layers"] == [0, 1] and arch["attention_layers"] == []
    # Mamba2: 4 heads x 32 = 128 inner channels, state 16; convolution over 128 + 2 x 16 channels, window 3.
    assert arch["state_elements_per_layer"] == 128 * 16 + (128 + 2 * 16) * 3


def test_a_hybrid_names_its_state_layers_and_its_attention_layers(tiny_models):
    facts = inspect_directory(tiny_models["hybrid"])
    arch = facts.architecture_facts
    assert facts.family == Family.HYBRID
    assert arch["attention_layers"] == [1] and arch["state_layers"] == [0, 2, 3]
    # Granite 4 style: a MoE too, its experts stacked in one tensor per layer.
    assert arch["experts"] == 4 and arch["expert_parameters"] == 4 * 4 * 3 * 64 * 128
    assert arch["active_parameters"] < arch["total_parameters"] == facts.parameter_count


@pytest.mark.parametrize("name", ["vision_language", "gemma3"])
def test_a_vision_language_model_measures_its_vision_tower_and_reads_its_decoder_shape(tiny_models, name):
    facts = inspect_directory(tiny_models[name])
    vision = facts.architecture_facts["vision"]
    assert facts.family == Family.VISION_LANGUAGE
    assert vision["in_weights"] and vision["layers"] == 1 and vision["tokens_per_image"] == 4
    assert 0 < vision["parameters"] < facts.parameter_count
    # The decoder's settings are nested under text_config: read there, the KV estimate is not zero.
    assert facts.shape["num_hidden_layers"] == 2 and facts.shape["num_key_value_heads"] == 1
    assert facts.context_length == 2048


def test_a_vision_language_models_processor_knows_the_image_tokens_its_weights_expect(tiny_models):
    from transformers import AutoProcessor

    smolvlm = AutoProcessor.from_pretrained(tiny_models["vision_language"])
    assert smolvlm.image_token_id == config_of(tiny_models["vision_language"])["image_token_id"]
    gemma = AutoProcessor.from_pretrained(tiny_models["gemma3"])
    config = config_of(tiny_models["gemma3"])
    assert gemma.tokenizer.image_token_id == config["image_token_index"]
    assert gemma.tokenizer.boi_token_id == config["boi_token_index"]
    assert config["image_token_index"] < config["text_config"]["vocab_size"]


def test_a_speech_model_is_an_encoder_decoder_with_cross_attention(tiny_models):
    facts = inspect_directory(tiny_models["speech"])
    arch = facts.architecture_facts
    assert facts.family == Family.SPEECH
    assert arch["encoder_layers"] == 1 and arch["decoder_layers"] == 1 and arch["num_mel_bins"] == 80
    assert arch["cross_attention_tokens"] == 1500
    assert facts.context_length == 448
    assert (tiny_models["speech"] / "preprocessor_config.json").exists()


def test_a_speech_models_tokenizer_holds_whispers_prompt_and_language_tokens_its_config_names(tiny_models):
    """vLLM writes a transcription's prompt as ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`` and
    detects a translation's language among the ``<|xx|>`` tokens: each must be one token of the vocabulary."""
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(tiny_models["speech"]).tokenizer
    config = config_of(tiny_models["speech"])
    prompt = tokenizer.encode(
        "<|startoftranscript|><|de|><|translate|><|notimestamps|>", add_special_tokens=False
    )
    named = [
        tokenizer.convert_tokens_to_ids(t)
        for t in ("<|startoftranscript|>", "<|de|>", "<|translate|>", "<|notimestamps|>")
    ]
    assert prompt == named and len(set(named)) == 4
    assert config["decoder_start_token_id"] == named[0]
    assert tokenizer.convert_ids_to_tokens(config["eos_token_id"]) == "<|endoftext|>"
    languages = [tokenizer.convert_tokens_to_ids(f"<|{code}|>") for code in ("en", "fr", "ja", "yue")]
    assert len(set(languages)) == 4 and max(languages) < config["vocab_size"]


def test_tiny_models_are_a_few_megabytes_of_safetensors_with_a_tokenizer(tiny_models):
    for folder in tiny_models.values():
        files = {p.name: p.stat().st_size for p in folder.iterdir()}
        assert "model.safetensors" in files and "tokenizer.json" in files
        assert not any(name.endswith((".bin", ".pt", ".py")) for name in files)
        assert sum(files.values()) < 16 * 1024 * 1024


def test_make_tiny_model_builds_a_family_and_refuses_an_unknown_one_or_a_used_folder(tiny_models, tmp_path):
    tokenizer = tiny_models["dense"]
    out = tmp_path / "moe"
    call_command("make_tiny_model", "moe", str(out), tokenizer=str(tokenizer))
    assert inspect_directory(out).family == Family.MOE
    with pytest.raises(CommandError, match="not a family or architecture"):
        call_command("make_tiny_model", "transformer-xl", str(tmp_path / "x"), tokenizer=str(tokenizer))
    with pytest.raises(CommandError, match="not empty"):
        call_command("make_tiny_model", "dense", str(out), tokenizer=str(tokenizer))


# --- From configs of real models alone (no weights) ----------------------------------------------
def test_jamba_attends_every_eighth_layer_and_is_a_hybrid_mixture_of_experts():
    config = {
        "model_type": "jamba",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "attn_layer_period": 8,
        "attn_layer_offset": 4,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 16,
        "num_experts_per_tok": 2,
        "intermediate_size": 14336,
        "mamba_d_state": 16,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
    }
    facts = families.read(config)
    assert facts["family"] == Family.HYBRID
    assert facts["attention_layers"] == [4, 12, 20, 28]
    assert len(facts["state_layers"]) == 28
    # Mamba 1: no groups; 8192 inner channels x state 16, plus a window of 3 over 8192 channels.
    assert facts["state_elements_per_layer"] == 8192 * 16 + 8192 * 3
    # Experts in every other layer only (16 of 32), read from the config when there are no weights.
    assert facts["expert_parameters"] == 16 * 16 * 3 * 4096 * 14336
    assert "active_parameters" not in facts  # no weights: the total is not known


def test_falcon_h1_runs_attention_and_state_side_by_side_in_every_layer():
    config = {
        "model_type": "falcon_h1",
        "num_hidden_layers": 3,
        "hidden_size": 1024,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "mamba_d_ssm": 1536,
        "mamba_d_state": 128,
        "mamba_n_groups": 1,
        "mamba_d_conv": 4,
    }
    facts = families.read(config)
    assert facts["family"] == Family.HYBRID
    assert facts["attention_layers"] == facts["state_layers"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("config", "attention", "state"),
    [
        # Nemotron-H: M is Mamba, * attention, - an MLP-only layer.
        ({"hybrid_override_pattern": "M-M*-M", "num_hidden_layers": 6}, [3], [0, 2, 5]),
        # Qwen3-Next: linear attention keeps a state, full attention a KV cache.
        (
            {
                "layer_types": ["linear_attention", "linear_attention", "full_attention"],
                "num_hidden_layers": 3,
            },
            [2],
            [0, 1],
        ),
        # Nemotron-H in transformers' own form: the list of blocks is the layer count.
        ({"layers_block_type": ["linear_attention", "moe", "full_attention", "mlp"]}, [2], [0]),
        # Gemma 3: sliding-window attention is still attention.
        ({"layer_types": ["sliding_attention", "full_attention"], "num_hidden_layers": 2}, [0, 1], []),
        ({"model_type": "mamba", "num_hidden_layers": 2, "state_size": 16}, [], [0, 1]),
    ],
)
def test_which_layers_hold_state_is_read_from_each_config_convention(config, attention, state):
    facts = families.read({"hidden_size": 64, "num_attention_heads": 2, **config})
    assert facts["attention_layers"] == attention and facts["state_layers"] == state


def test_a_gguf_style_vision_model_without_tower_weights_estimates_the_tower_from_its_config():
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24},
    }
    vision = families.read(config, {"language_model.embed": [10, 64]})["vision"]
    assert not vision["in_weights"]
    assert vision["parameters"] == 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)


def test_an_odd_config_value_is_ignored_not_trusted():
    facts = families.read({"num_hidden_layers": "many", "num_experts": True, "num_experts_per_tok": -1})
    assert facts["family"] == Family.DENSE and facts["layers"] == 0


# --- Stored with the version, shown on its page ----------------------------------------------------
@pytest.fixture
def imported(tiny_models, org, team, settings, tmp_path):
    """Import a tiny model of ``name`` as a ready version, through the importer and the artifact store."""
    import shutil

    from portfolio.registry import services
    from portfolio.registry.stores import default_store
    from portfolio.registry.tasks import import_version
    from tests.conftest import actor_for

    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_CACHE = tmp_path / "cache"
    default_store.cache_clear()

    def import_(name: str):
        folder = shutil.copytree(tiny_models[name], settings.IMPORT_ROOTS[0] / name)
        engineer = actor_for(org["engineer"])
        model = services.create_model(actor=engineer, name=f"tiny-{name}".replace("_", "-"), owner_team=team)
        version = services.start_import(
            actor=engineer, model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
        )
        import_version(version.pk)
        version.refresh_from_db()
        assert version.status == VersionStatus.READY, version.status_detail
        return version

    yield import_
    default_store.cache_clear()


@pytest.mark.django_db
def test_an_imported_hybrid_stores_its_facts_and_its_page_shows_them(imported, org, client):
    import re

    from django.urls import reverse

    version = imported("hybrid")
    assert version.family == Family.HYBRID
    assert version.architecture_facts["state_layers"] == [0, 2, 3]
    client.force_login(org["viewer"])
    page = client.get(reverse("version-detail", args=[version.model.name, version.number])).content.decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "Hybrid (attention + state-space)" in text
    assert "State layers 3 of 4: 0,2-3" in text
    assert "Attention layers 1: 1" in text
    assert "4 experts, 2 active per token" in text
    row = client.get(f"/api/v1/models/{version.model.name}/versions/{version.number}").json()
    assert row["family"] == "hybrid" and row["architecture_facts"]["attention_layers"] == [1]


@pytest.mark.django_db
def test_versions_imported_before_families_are_read_from_their_stored_headers_once(imported, org, team):
    from portfolio.audit.models import AuditEvent
    from portfolio.registry import services
    from portfolio.registry.choices import VersionKind
    from portfolio.registry.models import ModelVersion
    from tests.conftest import actor_for

    vlm = imported("vision_language")
    expected = (vlm.family, vlm.architecture_facts, vlm.shape)
    adapter_model = services.create_model(actor=actor_for(org["engineer"]), name="vlm-tone", owner_team=team)
    adapter = ModelVersion.objects.create(
        model=adapter_model,
        number=1,
        kind=VersionKind.ADAPTER,
        base_version=vlm,
        source=Source.FINE_TUNE,
        artifact=vlm.artifact,
        status=VersionStatus.READY,
    )
    # As an earlier release left them: no family, and a vision-language shape read from the wrong level.
    ModelVersion.objects.filter(pk__in=[vlm.pk, adapter.pk]).update(
        family="", architecture_facts={}, shape={}
    )

    call_command("read_architectures")
    vlm.refresh_from_db()
    adapter.refresh_from_db()
    assert (vlm.family, vlm.architecture_facts, vlm.shape) == expected
    assert (adapter.family, adapter.architecture_facts) == (Family.VISION_LANGUAGE, vlm.architecture_facts)
    assert AuditEvent.objects.filter(action="model_version.architecture").count() == 2
    call_command("read_architectures")
    assert AuditEvent.objects.filter(action="model_version.architecture").count() == 2
