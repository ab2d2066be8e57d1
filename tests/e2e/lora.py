"""A real (small, untrained) LoRA adapter for SmolLM2, made with peft for serving tests."""

from __future__ import annotations

from pathlib import Path


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    rank: int = 8,
    seed: int = 0,
    scale: float = 0.01,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> Path:
    """``scale``: the spread of the random B matrices (0.01 barely moves the model; merging tests take more,
    so that the adapter changes what is decoded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, scale)  # non-zero, so the adapter really changes the model
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
