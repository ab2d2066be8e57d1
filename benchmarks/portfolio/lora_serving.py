"""What serving a LoRA adapter costs on vLLM CPU: per-request latency of the base, of a rank-8 adapter on
q/k/v/o and of one on all seven linear layers, on the demo ticket-routing prompts (3 tokens each, greedy).

    .venv/bin/python -m benchmarks.portfolio.lora_serving make BASE_DIR WORK_DIR          # the two adapters
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=nobind \
        .venv-engine/bin/python -m benchmarks.portfolio.lora_serving serve BASE_DIR WORK_DIR  # vLLM, in-process

BASE_DIR is a SmolLM2-135M-Instruct safetensors folder (the demo model as the GGUF importer converts it).
The adapters' weights are random: latency does not depend on what an adapter learned.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

MODULES = {
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
ROWS = Path(__file__).resolve().parents[2] / "training" / "demo_data" / "ticket_routing.jsonl"


def make(base: Path, work: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name, target in MODULES.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        adapter = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules=target, task_type="CAUSAL_LM")
        )
        with torch.no_grad():
            for weight_name, weight in adapter.named_parameters():
                if "lora_B" in weight_name:
                    weight.normal_(0, 0.01)
        adapter.save_pretrained(work / name)


def serve(base: Path, work: Path, rounds: int = 2) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()[:20]]
    prompts = [
        tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        for row in rows
    ]
    llm = LLM(
        model=str(base), enable_lora=True, max_lora_rank=16, max_loras=2, max_model_len=512, dtype="bfloat16"
    )
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    requests = [("base", None)] + [
        (name, LoRARequest(name, i, str(work / name))) for i, name in enumerate(MODULES, start=1)
    ]
    for round_ in range(rounds):
        for name, request in requests:
            times = []
            for prompt in prompts:
                started = time.monotonic()
                llm.generate([prompt], params, lora_request=request, use_tqdm=False)
                times.append(time.monotonic() - started)
            print(f"round {round_} {name}: p50 {statistics.median(times) * 1000:.0f} ms", flush=True)


if __name__ == "__main__":
    step, base_dir, work_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    make(base_dir, work_dir) if step == "make" else serve(base_dir, work_dir)
