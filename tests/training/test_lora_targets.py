"""LoRA target modules per architecture: each family's layers read off a tiny config built on the meta
device (tests/training/tiny_configs.py), the default and chosen targets, and names a base does not have
refused before a job is queued, by the service, the API and the start form."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.errors import Invalid
from portfolio.registry.choices import Source
from portfolio.registry.models import ModelVersion
from tests.registry.conftest import ready_base
from tests.training import tiny_configs
from tests.training.conftest import stored
from training import finetune
from training.defaults import Architecture, Hyperparameters, architecture_of, target_modules_for
from training.lora_targets import MAX_LISTED, listed
from training.models import FineTuneJob

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def read(config, tmp_path) -> Architecture:
    config.save_pretrained(tmp_path)  # the config only: the model is built on the meta device
    return Architecture.read(tmp_path)


# (tiny config, family, targets chosen by default for 60 rows, the choices offered)
FAMILIES = [
    ("llama", "dense", ATTENTION + MLP, ["attention", "attention+mlp"]),
    ("qwen3_moe", "moe", ATTENTION, ["attention", "attention+experts"]),
    ("gpt_oss", "moe", ATTENTION, ["attention", "attention+experts"]),
    ("qwen2_moe", "moe", ATTENTION, ["attention", "attention+mlp", "attention+experts"]),
    ("mamba", "state-space", ["in_proj", "x_proj", "dt_proj"], ["attention+state"]),
    ("mamba2", "state-space", ["in_proj"], ["attention+state"]),
    (
        "jamba",
        "hybrid",
        [*ATTENTION, "in_proj", "x_proj", "dt_proj"],
        ["attention", "attention+mlp", "attention+experts", "attention+state"],
    ),
    ("falcon_h1", "hybrid", [*ATTENTION, "in_proj"], ["attention", "attention+mlp", "attention+state"]),
    (
        "granitemoehybrid",
        "hybrid",
        [*ATTENTION, "in_proj"],
        ["attention", "attention+mlp", "attention+experts", "attention+state"],
    ),
    (
        "lfm2",
        "hybrid",
        ["q_proj", "k_proj", "v_proj", "self_attn.out_proj", "in_proj", "conv.out_proj"],
        ["attention", "attention+mlp", "attention+state"],
    ),
    ("gemma3", "vision-language", ATTENTION + MLP, ["attention", "attention+mlp"]),
    ("llava", "vision-language", ATTENTION + MLP, ["attention", "attention+mlp"]),
    (
        "whisper",
        "speech",
        ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"],
        ["attention", "attention+mlp"],
    ),
]


@pytest.mark.parametrize(("config", "family", "default", "choices"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_each_family_gets_its_own_default_targets_and_choices(config, family, default, choices, tmp_path):
    architecture = read(tiny_configs.config(config), tmp_path)
    assert architecture.family == family
    assert Hyperparameters().resolved(60, architecture).target_modules == default
    assert architecture.choices() == choices
    assert not architecture.unknown(default)  # every default is a layer the model has


def test_a_mixture_of_experts_adapts_its_experts_only_when_asked(tmp_path):
    architecture = read(tiny_configs.config("qwen3_moe"), tmp_path)
    assert target_modules_for(architecture, 5_000) == ATTENTION  # many rows: still attention only
    assert target_modules_for(architecture, 60, "attention+experts") == ATTENTION + EXPERTS
    # Its experts are fused 3-D weights, no linear layers: named with their module.
    assert architecture.grouped()["experts"] == tuple(EXPERTS)


def test_a_shared_expert_is_the_dense_mlp_of_a_mixture_of_experts(tmp_path):
    architecture = read(tiny_configs.config("qwen2_moe"), tmp_path)
    assert target_modules_for(architecture, 60, "attention+mlp") == ATTENTION + MLP
    assert architecture.grouped()["router"] == ("shared_expert_gate",)  # never chosen


def test_a_hybrid_may_adapt_its_attention_only_or_its_experts(tmp_path):
    architecture = read(tiny_configs.config("jamba"), tmp_path)
    assert target_modules_for(architecture, 60, "attention") == ATTENTION
    assert target_modules_for(architecture, 60, "attention+experts") == ATTENTION + EXPERTS


def test_a_mamba_mixers_output_projection_is_not_offered(tmp_path):
    # The Mamba kernels read out_proj's weight directly, and peft refuses it on Mamba models.
    architecture = read(tiny_configs.config("mamba"), tmp_path)
    assert architecture.unknown(["out_proj", "in_proj"]) == ["out_proj"]


def test_a_vision_language_model_offers_its_language_model_not_its_vision_tower(tmp_path):
    architecture = read(tiny_configs.config("gemma3"), tmp_path)
    assert not any("vision_tower" in path or "multi_modal_projector" in path for path in architecture.paths)
    assert any(path.startswith("model.language_model.") for path in architecture.paths)
    # The tower's own layers (SigLIP's out_proj, fc1) are not layers LoRA may adapt here.
    assert architecture.unknown(["out_proj", "fc1", "vision_tower.encoder.layers.0.self_attn.q_proj"]) == [
        "out_proj",
        "fc1",
        "vision_tower.encoder.layers.0.self_attn.q_proj",
    ]


def test_names_match_the_end_of_a_layers_full_name_as_peft_matches_them(tmp_path):
    architecture = read(tiny_configs.config("llama"), tmp_path)
    assert (
        architecture.unknown(
            ["self_attn.q_proj", "layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"]
        )
        == []
    )
    assert architecture.unknown(["proj", "lm_head", "embed_tokens", "layers.9.self_attn.q_proj"]) == [
        "proj",
        "lm_head",
        "embed_tokens",
        "layers.9.self_attn.q_proj",
    ]


def test_a_config_declaring_more_layers_than_any_model_is_not_built(tmp_path):
    config = tiny_configs.config("llama")
    config.num_hidden_layers = 100_000
    config.save_pretrained(tmp_path)
    assert architecture_of(tmp_path) is None


def test_listed_names_are_bounded_in_count_and_length():
    text = listed([f"layer_{i}" for i in range(100)] + ["x" * 500])
    assert text.endswith(f"(and {101 - MAX_LISTED} more)") and "layer_23" in text and "layer_24" not in text
    assert len(listed(["y" * 500])) == 60


# --- Refused before the job is queued ----------------------------------------------------------------
def stored_base(engineer, team, config, tmp_path, name: str) -> ModelVersion:
    """A ready base version whose stored files are a tiny family's config.json (no weights)."""
    folder = tmp_path / name
    config.save_pretrained(folder)
    return ready_base(engineer, team, name, stored(folder), source=Source.HUB)


@pytest.fixture
def moe_base(engineer, team, tmp_path) -> ModelVersion:
    return stored_base(engineer, team, tiny_configs.config("qwen3_moe"), tmp_path, "tiny-moe")


@pytest.fixture
def llama_base(engineer, team, tmp_path) -> ModelVersion:
    return stored_base(engineer, team, tiny_configs.config("llama"), tmp_path, "tiny-llama")


def start(engineer, base, dataset_version, pool, **hyperparameters) -> FineTuneJob:
    return finetune.start_job(
        actor=engineer,
        base_version=base,
        dataset_version=dataset_version,
        pool=pool,
        hyperparameters=hyperparameters,
    )


@pytest.mark.django_db
def test_a_layer_the_base_does_not_have_is_refused_with_the_names_it_has(
    engineer, moe_base, dataset_version, cpu_pool, enqueued
):
    with pytest.raises(Invalid) as refused:
        start(engineer, moe_base, dataset_version, cpu_pool, target_modules=["q_proj", "gate_proj"])
    message = refused.value.message
    assert message.startswith("hyperparameters.target_modules: 'gate_proj' is not a layer LoRA can adapt in")
    assert "mixture of experts" in message and "experts.gate_up_proj (experts)" in message
    assert not FineTuneJob.objects.exists() and enqueued == []


@pytest.mark.django_db
def test_named_layers_and_a_choice_the_base_has_are_kept_for_the_run(
    engineer, moe_base, llama_base, dataset_version, cpu_pool, enqueued
):
    job = start(engineer, moe_base, dataset_version, cpu_pool, lora_targets="attention+experts")
    assert job.hyperparameters["lora_targets"] == "attention+experts"
    job = start(engineer, moe_base, dataset_version, cpu_pool, target_modules=["q_proj", "experts.down_proj"])
    assert job.hyperparameters["target_modules"] == ["q_proj", "experts.down_proj"]
    with pytest.raises(
        Invalid, match="has no experts layers to adapt; choose one of: attention, attention\\+mlp"
    ):
        start(engineer, llama_base, dataset_version, cpu_pool, lora_targets="attention+experts")
    assert FineTuneJob.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("names", "why"),
    [
        (["q_proj"] * 33, "at most 32 names"),
        (["x" * 101], "at most 100 characters"),
        (["q_proj; rm -rf"], "is not a layer name"),
        ("q_proj", "a list of layer names"),
    ],
)
def test_malformed_names_are_refused_before_the_base_is_read(
    engineer, base, dataset_version, cpu_pool, enqueued, names, why
):
    with pytest.raises(Invalid, match=why):
        start(engineer, base, dataset_version, cpu_pool, target_modules=names)


@pytest.mark.django_db
def test_a_base_whose_architecture_cannot_be_read_takes_names_unchecked(
    engineer, base, dataset_version, cpu_pool, enqueued
):
    # The ``base`` fixture's artifact is a stand-in without a stored config.json.
    job = start(engineer, base, dataset_version, cpu_pool, target_modules=["q_proj", "v_proj"])
    assert job.hyperparameters["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.django_db
def test_the_api_refuses_an_unknown_layer_with_400_and_outsiders_and_viewers_as_before(
    client, org, moe_base, dataset_version, cpu_pool, enqueued
):
    payload = {
        "base_version_id": moe_base.pk,
        "dataset_version_id": dataset_version.pk,
        "pool": "cpu",
        "hyperparameters": {"epochs": 1, "target_modules": ["q_proj", "w1"]},
    }
    client.force_login(org["engineer"])
    response = client.post("/api/v1/training/jobs", payload, content_type="application/json")
    assert response.status_code == 400
    assert "'w1' is not a layer LoRA can adapt" in response.json()["error"]["message"]
    payload["hyperparameters"]["target_modules"] = ["q_proj", "experts.gate_up_proj"]
    response = client.post("/api/v1/training/jobs", payload, content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["hyperparameters"]["target_modules"] == ["q_proj", "experts.gate_up_proj"]
    client.force_login(org["viewer"])
    assert client.post("/api/v1/training/jobs", payload, content_type="application/json").status_code == 403
    client.force_login(org["outsider"])
    assert client.post("/api/v1/training/jobs", payload, content_type="application/json").status_code == 404
    assert FineTuneJob.objects.count() == 1


@pytest.mark.django_db
def test_the_form_shows_the_chosen_layers_and_refuses_an_unknown_one_next_to_its_field(
    client, org, moe_base, dataset_version, cpu_pool, enqueued
):
    client.force_login(org["engineer"])
    page = client.get(
        reverse("job-create") + f"?base_version={moe_base.pk}&dataset_version={dataset_version.pk}"
    )
    html = page.content.decode()
    assert "is a mixture of experts model" in html and "q_proj, k_proj, v_proj, o_proj</code>" in html
    preview = client.get(
        reverse("job-targets"),
        {
            "base_version": moe_base.pk,
            "dataset_version": dataset_version.pk,
            "lora_targets": "attention+experts",
        },
    )
    assert (
        "q_proj, k_proj, v_proj, o_proj, experts.gate_up_proj, experts.down_proj</code>"
        in preview.content.decode()
    )
    data = {
        "base_version": moe_base.pk,
        "dataset_version": dataset_version.pk,
        "pool": cpu_pool.name,
        "method": "lora",
        "target_modules": "q_proj, mlp.gate",
    }
    response = client.post(reverse("job-create"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors["target_modules"]
    assert errors[0].startswith("'mlp.gate' is not a layer LoRA can adapt in")
    assert not FineTuneJob.objects.exists()
    response = client.post(reverse("job-create"), {**data, "target_modules": "q_proj v_proj"})
    assert response.status_code == 302
    assert FineTuneJob.objects.get().hyperparameters["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.django_db
def test_the_preview_of_a_base_the_actor_may_not_see_is_not_found(client, org, moe_base):
    client.force_login(org["outsider"])
    assert client.get(reverse("job-targets"), {"base_version": moe_base.pk}).status_code == 404
    client.force_login(org["viewer"])
    assert client.get(reverse("job-targets"), {"base_version": moe_base.pk}).status_code == 403


@pytest.mark.django_db
def test_a_base_or_dataset_that_is_a_digit_but_not_a_number_previews_nothing(client, org, moe_base):
    client.force_login(org["engineer"])
    client.raise_request_exception = False  # "²".isdigit() once let int("²") fail into a 500
    for url in (reverse("job-targets"), reverse("job-create")):
        assert client.get(url, {"base_version": "²"}).status_code == 200
        assert client.get(url, {"base_version": moe_base.pk, "dataset_version": "²"}).status_code == 200


@pytest.mark.django_db
def test_a_jobs_page_shows_its_target_choice_and_the_modules_it_resolved(client, org, make_job):
    job = make_job(
        hyperparameters={
            "method": "lora",
            "lora_r": 8,
            "lora_targets": "attention+experts",
            "target_modules": ATTENTION + EXPERTS,
        }
    )
    client.force_login(org["viewer"])
    html = client.get(reverse("job-detail", kwargs={"job_id": job.pk})).content.decode()
    assert "attention+experts" in html and "experts.gate_up_proj" in html
