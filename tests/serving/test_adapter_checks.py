"""An adapter vLLM refuses to load is refused when added to a deployment, saying why. Found by review: the rank
was read from ``r`` alone, and nothing else of the adapter's config was asked, so an adapter whose
``rank_pattern`` gave some layers a rank above the deployment's ``max_lora_rank`` (or a DoRA adapter, ...) was
accepted; its hot load failed, and every later start of the deployment's engines, which load it as
``--lora-modules``, crash-looped to FAILED: one bad adapter took the base model down.

What is refused follows vLLM 0.32's ``PEFTHelper.validate_legal``; a version imported before these facts were
recorded (only ``r``) is checked on its ``r``, as it was then."""

from __future__ import annotations

import pytest

from portfolio.errors import Invalid
from serving import services
from tests.serving.conftest import deploy, make_adapter

pytestmark = pytest.mark.django_db


@pytest.fixture
def lora(owner, team, base_version, pool, node):
    """A deployment serving adapters of rank up to 16 (the default ``max_lora_rank``)."""
    return deploy(owner, team, base_version, pool, args={"enable_lora": True, "max_lora_rank": 16})


def _adapter(org, team, artifact, base_version, **facts):
    adapter = make_adapter(org, team, artifact, base_version)
    adapter.metrics = {"adapter": {"r": 8, **facts}}
    adapter.save(update_fields=["metrics"])
    return adapter


def test_an_adapter_whose_rank_pattern_passes_max_lora_rank_is_refused(
    org, owner, team, artifact, base_version, lora
):
    adapter = _adapter(org, team, artifact, base_version, rank_pattern={"q_proj": 64})
    with pytest.raises(Invalid, match=r"has rank 64 in some layers .* up to max_lora_rank=16"):
        services.add_adapter(actor=owner, deployment=lora, adapter=adapter, name="tone")
    assert not lora.adapters.exists()


def test_a_dora_adapter_is_refused(org, owner, team, artifact, base_version, lora):
    adapter = _adapter(org, team, artifact, base_version, use_dora=True)
    with pytest.raises(Invalid, match="vLLM serves no DoRA adapter"):
        services.add_adapter(actor=owner, deployment=lora, adapter=adapter, name="tone")
    assert not lora.adapters.exists()


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({"lora_bias": True}, "no adapter with LoRA bias"),
        ({"bias": "all"}, "no adapter with trained biases"),
        ({"modules_to_save": ["lm_head"]}, "saving whole modules other than a classifier"),
        ({"init_lora_weights": "pissa"}, "initialised with 'pissa'"),
        ({"alora_invocation_tokens": [12, 13]}, "no Activated LoRA adapter"),
        ({"layer_replication": [[0, 4]]}, "no adapter with layer_replication"),
        ({"use_qalora": True}, "no QALoRA adapter"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern gives a rank that is not a positive whole number"),
        ({"r": 0}, "no adapter of rank 0"),
    ],
    ids=lambda value: value if isinstance(value, str) else next(iter(value)),
)
def test_what_vllm_refuses_is_refused_saying_why(
    org, owner, team, artifact, base_version, lora, facts, reason
):
    adapter = _adapter(org, team, artifact, base_version, **facts)
    with pytest.raises(Invalid, match=reason):
        services.add_adapter(actor=owner, deployment=lora, adapter=adapter, name="tone")


@pytest.mark.parametrize(
    "facts",
    [
        {},  # imported before the facts were recorded
        {"rank_pattern": {"q_proj": 16}, "use_dora": False, "lora_bias": False, "bias": "none"},
        {"modules_to_save": ["score"], "init_lora_weights": "gaussian", "alora_invocation_tokens": None},
        {"init_lora_weights": True, "layer_replication": None, "use_qalora": False},
    ],
    ids=["only-r", "plain", "classifier", "defaults"],
)
def test_what_vllm_serves_is_accepted(org, owner, team, artifact, base_version, lora, facts):
    adapter = _adapter(org, team, artifact, base_version, **facts)
    attached = services.add_adapter(actor=owner, deployment=lora, adapter=adapter, name="tone")
    assert attached.version_id == adapter.pk


def test_max_lora_rank_cannot_be_lowered_below_a_rank_pattern(
    org, owner, team, artifact, base_version, pool, node
):
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True, "max_lora_rank": 64})
    adapter = _adapter(org, team, artifact, base_version, rank_pattern={"q_proj": 32})
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    with pytest.raises(
        Invalid, match=r"max_lora_rank: 16 is below the rank of its adapter tone \(.*rank 32\)"
    ):
        services.restart(actor=owner, deployment=deployment, args={"enable_lora": True, "max_lora_rank": 16})
    services.restart(actor=owner, deployment=deployment, args={"enable_lora": True, "max_lora_rank": 32})
