"""The merge itself: an adapter's LoRA weights folded into its base's (peft ``merge_and_unload``), saved as
safetensors with the base's tokenizer, so that vLLM serves the result as a plain model without LoRA."""

from __future__ import annotations

import shutil
from pathlib import Path

# What ``save_pretrained`` writes, or weights of the base that the merged ones replace: never copied over.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")


def merge_directory(base_dir: Path, adapter_dir: Path, output_dir: Path) -> None:
    """Write the merged model of ``adapter_dir`` on ``base_dir`` to ``output_dir`` (which must not exist),
    in the base's dtype, with every non-weight file of the base (tokenizer, chat template) alongside."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto", low_cpu_mem_usage=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    output_dir.mkdir(parents=True)
    merged.save_pretrained(output_dir, safe_serialization=True)
    for path in sorted(base_dir.rglob("*")):
        relative = path.relative_to(base_dir)
        target = output_dir / relative
        if not path.is_file() or target.exists() or path.name.endswith(".index.json"):
            continue
        if path.suffix in WEIGHT_SUFFIXES:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
