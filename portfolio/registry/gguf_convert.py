"""Convert a GGUF file to a safetensors model folder that vLLM and transformers load.

Run as its own process (``python -m portfolio.registry.gguf_convert GGUF OUT``) so that torch and the
dequantised weights never stay in a long-lived worker's memory. transformers dequantises GGUF tensors on
load; the quantiser bookkeeping is dropped so the model saves as a plain (bfloat16) checkpoint. The
tokenizer keeps every flag the file states (``gguf_tokenizer``): BOS/EOS, space prefix, special tokens,
end-of-generation tokens and chat templates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from portfolio.registry import gguf_tokenizer

# Part of the conversion cache's key: bump it when the converter's output changes, so that no import
# reuses a folder an older converter wrote (2: the tokenizer keeps the file's flags, BOS included).
CONVERTER_VERSION = 2


def convert_tokenizer(gguf_path: Path, out_dir: Path) -> gguf_tokenizer.TokenizerFlags:
    """Save the GGUF's tokenizer, with its flags, as a transformers tokenizer folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    flags = gguf_tokenizer.read_flags(gguf_path)
    gguf_tokenizer.apply_flags(tokenizer, flags)
    tokenizer.save_pretrained(out_dir)
    gguf_tokenizer.write_flags(out_dir, tokenizer, flags)
    return flags


def convert(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
    )
    # The weights are dequantized on load; saved as they are, they must not claim a quantizer.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    convert_tokenizer(gguf_path, out_dir)  # after the model: it completes the model's generation_config.json
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    result = convert(args.gguf, args.out, args.dtype)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
