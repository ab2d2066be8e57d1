"""What vLLM refuses of a LoRA adapter, asked of the facts its import recorded from its ``adapter_config.json``
(``metrics["adapter"]``, ``portfolio.registry.inspection``) before a deployment serves it.

An adapter the engine refuses fails its hot load (the reason on the deployment's timeline) on every replica,
at every pass, while the deployment serves it under a name that answers nothing. (Until engines started
without their adapters and hot-loaded them once ready, it also crash-looped every start, base model and
all.) The checks follow vLLM 0.32's ``PEFTHelper.validate_legal`` (vllm/lora/peft_helper.py). A version inspected before
these facts were recorded lacks their keys: it is checked on its ``r`` alone, as it was then.
"""

from __future__ import annotations

from portfolio.errors import Invalid
from portfolio.registry.models import ModelVersion

# The whole modules vLLM loads with an adapter (a classification model's head); any other it refuses.
SAVED_MODULES = ("classifier", "score")
# Initialisations that set only the adapter's first weights: the saved adapter is a plain LoRA. The others
# (PiSSA, OLoRA, CorDA, LoftQ) change the base model's weights when PEFT loads the adapter.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# PEFT features vLLM does not implement, refused whenever set, and what to say.
UNSUPPORTED = {
    "use_dora": "vLLM serves no DoRA adapter (use_dora); merge it into a full version to serve it",
    "lora_bias": "vLLM serves no adapter with LoRA bias (lora_bias)",
    "alora_invocation_tokens": "vLLM serves no Activated LoRA adapter (alora_invocation_tokens)",
    "layer_replication": "vLLM serves no adapter with layer_replication",
    "use_bdlora": "vLLM serves no block-diagonal LoRA adapter (use_bdlora)",
    "use_qalora": "vLLM serves no QALoRA adapter (use_qalora)",
}


def _facts(adapter: ModelVersion) -> dict:
    facts = (adapter.metrics or {}).get("adapter")
    return facts if isinstance(facts, dict) else {}


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _shown(value: object) -> str:
    """A value of the adapter's config as a refusal quotes it: shortened, the config is the uploader's."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def rank(adapter: ModelVersion) -> int | None:
    """The largest LoRA rank of the adapter's layers, which vLLM compares with ``max_lora_rank``: its ``r``, or
    a larger one its ``rank_pattern`` gives some of them."""
    facts = _facts(adapter)
    pattern = facts.get("rank_pattern")
    ranks = [facts.get("r"), *(pattern.values() if isinstance(pattern, dict) else ())]
    return max((r for r in ranks if _positive(r)), default=None)


def refusal(adapter: ModelVersion) -> str | None:
    """Why vLLM would refuse to load the adapter (whatever the deployment's arguments), or None."""
    facts = _facts(adapter)
    pattern = facts.get("rank_pattern") or {}
    if "r" in facts and not _positive(facts["r"]):
        return f"vLLM serves no adapter of rank {_shown(facts['r'])} (r: a positive whole number)"
    if not isinstance(pattern, dict) or not all(_positive(r) for r in pattern.values()):
        return "vLLM serves no adapter whose rank_pattern gives a rank that is not a positive whole number"
    for key, reason in UNSUPPORTED.items():
        if facts.get(key):
            return reason
    saved = facts.get("modules_to_save")
    if saved and (not isinstance(saved, list) or any(m not in SAVED_MODULES for m in saved)):
        return f"vLLM serves no adapter saving whole modules other than a classifier (modules_to_save: {_shown(saved)})"
    if "bias" in facts and facts["bias"] != "none":
        return f"vLLM serves no adapter with trained biases (bias: {_shown(facts['bias'])})"
    init = facts.get("init_lora_weights")
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        return (
            f"vLLM serves no adapter initialised with {_shown(init)} (init_lora_weights), which changes the base "
            "model's weights; convert it to a plain LoRA adapter first"
        )
    return None


def require_servable(adapter: ModelVersion, max_lora_rank: int) -> None:
    """Refuse an adapter a deployment's engines could not load, saying why."""
    reason = refusal(adapter)
    if reason:
        raise Invalid(f"{adapter.label}: {reason}.")
    largest = rank(adapter)
    if largest and largest > max_lora_rank:
        some = " in some layers (its rank_pattern)" if largest != _facts(adapter).get("r") else ""
        raise Invalid(
            f"{adapter.label} has rank {largest}{some}; the deployment allows up to "
            f"max_lora_rank={max_lora_rank}."
        )
