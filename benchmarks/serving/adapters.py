"""The adapters of the serving benchmark: random LoRA weights on the demo base, registered as versions."""

from __future__ import annotations

from pathlib import Path

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import Model, ModelVersion
from portfolio.registry.tasks import import_version

ACTOR = Actor.for_system("benchmark")
ADAPTER_MODEL = "bench-serving-router"


def write_adapter(base_dir: Path, folder: Path, seed: int) -> Path:
    """A rank-8 adapter on q/k/v/o with random weights, large enough to change greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    target = ["q_proj", "k_proj", "v_proj", "o_proj"]
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=target, task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def register_adapter(team: Team, base: ModelVersion, folder: Path) -> ModelVersion:
    """Registered as a trainer's run registers its output: the files stored, a ready adapter version."""
    model = Model.objects.filter(name=ADAPTER_MODEL).first() or registry.create_model(
        actor=ACTOR, name=ADAPTER_MODEL, owner_team=team
    )
    version = registry.start_import(
        actor=ACTOR, model=model, source=Source.LOCAL, ref=str(folder), base_version=base, enqueue=False
    )
    import_version(version.pk)
    version.refresh_from_db()
    if version.status != VersionStatus.READY:
        raise RuntimeError(f"adapter import failed: {version.status_detail}")
    return version
