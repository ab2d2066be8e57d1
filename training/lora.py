"""The training loop itself: supervised fine-tuning of a causal LM with LoRA, QLoRA (LoRA on a 4-bit
base) or all weights, the loss on the answer tokens only, with callbacks for progress, checkpoints and
cancellation.

It trains on the GPU its node task gave it (``CUDA_VISIBLE_DEVICES``), in bf16 where the GPU supports it,
else on the CPU in float32. How the base is loaded is decided by ``loading_for``, a pure function of the
method and of what the process can use (``Accelerator``), so that every choice is tested without a GPU.

Pure of Django: it takes folders and rows, so it runs (and is tested) in the job's child process alone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.defaults import FALLBACK_MODULES, LORA_METHODS, Hyperparameters, rank_for
from training.early_stopping import EVALS_PER_EPOCH, EarlyStopping
from training.losses import IGNORE, answer_loss

# Saved beside the weights in each checkpoint: what a resumed run needs to continue as if never stopped.
TRAINER_STATE = "trainer_state.pt"


class Unsupported(ValueError):
    """The job asks for what its process cannot do (QLoRA without a GPU or bitsandbytes, a GPU torch cannot
    use): the job fails with this message rather than train otherwise than asked."""


@dataclass(frozen=True)
class Accelerator:
    """What the trainer's process was given and can use."""

    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as the node task set it ("": none, None: not set)
    cuda: bool  # torch sees a CUDA device
    bf16: bool  # that device computes in bfloat16 natively (Ampere and later)
    bitsandbytes: str | None  # its version, when installed (the `gpu` extra)
    device_name: str = ""

    @classmethod
    def detect(cls) -> Accelerator:
        import torch

        cuda = torch.cuda.is_available()
        try:
            bnb: str | None = importlib.metadata.version("bitsandbytes")
        except importlib.metadata.PackageNotFoundError:
            bnb = None
        return cls(
            visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            cuda=cuda,
            # Without emulation: an older GPU "supports" bf16 only by running it slowly in float32.
            bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False),
            bitsandbytes=bnb,
            device_name=torch.cuda.get_device_name(0) if cuda else "",
        )


# QLoRA's base: 4-bit NormalFloat with its quantisation constants quantised too (double quant), as in the
# QLoRA paper; the matrix products run in the compute dtype.
NF4 = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
}


@dataclass(frozen=True)
class Loading:
    """How the trainer loads the base and computes: device, dtype of the loaded weights, mixed precision,
    and for QLoRA the 4-bit quantisation (``BitsAndBytesConfig`` keywords)."""

    method: str
    device: str  # cuda | cpu
    dtype: str  # of the weights as loaded (and of a quantised base's other layers)
    autocast: str | None = None  # the dtype matrix products run in on the GPU, over float32 weights
    quantization: dict | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``AutoModelForCausalLM.from_pretrained``."""
        import torch

        kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype)}
        if self.device == "cuda":
            # The whole model on the one GPU the process sees (its node task's claim).
            kwargs["device_map"] = {"": 0}
        if self.quantization is not None:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                **{
                    **self.quantization,
                    "bnb_4bit_compute_dtype": getattr(torch, self.quantization["bnb_4bit_compute_dtype"]),
                }
            )
        return kwargs

    def describe(self) -> str:
        """For the log and the job's metrics: "GPU, 4-bit NF4 base (double quant), bfloat16 compute"."""
        where = "GPU" if self.device == "cuda" else "CPU"
        if self.quantization is not None:
            return f"{where}, 4-bit NF4 base (double quant), {self.quantization['bnb_4bit_compute_dtype']} compute"
        return f"{where}, {self.dtype} weights" + (f", {self.autocast} compute" if self.autocast else "")


def loading_for(method: str, accelerator: Accelerator) -> Loading:
    """How to load the base for ``method`` with what this process can use; ``Unsupported`` when it cannot.

    A process given a GPU trains on it, never on the CPU instead; QLoRA never falls back to plain LoRA."""
    missing = []
    if accelerator.visible_devices and not accelerator.cuda:
        missing.append(
            f"a CUDA build of torch that can use GPU {accelerator.visible_devices} (given to this job by its "
            "node as CUDA_VISIBLE_DEVICES: check the node's torch and NVIDIA driver)"
        )
    elif method == "qlora" and not accelerator.cuda:
        missing.append("a CUDA GPU (run it on a GPU pool)")
    if method == "qlora" and accelerator.bitsandbytes is None:
        missing.append("the bitsandbytes package (install portfolio[gpu] on the node)")
    if missing:
        if method == "qlora":
            raise Unsupported(f"QLoRA needs {' and '.join(missing)}; it does not fall back to LoRA.")
        raise Unsupported(f"Training needs {missing[0]}; it does not fall back to the CPU.")
    if method == "qlora":
        compute = "bfloat16" if accelerator.bf16 else "float32"
        return Loading(
            method,
            "cuda",
            dtype=compute,
            autocast="bfloat16" if accelerator.bf16 else None,
            quantization={**NF4, "bnb_4bit_compute_dtype": compute},
        )
    if not accelerator.cuda:
        return Loading(method, "cpu", "float32")
    autocast = "bfloat16" if accelerator.bf16 else None
    if method == "full":
        # Every weight is updated: kept in float32 (bf16 would round small updates away), bf16 products.
        return Loading(method, "cuda", "float32", autocast)
    # LoRA: the frozen base in bf16 (half the memory), the adapter's own weights in float32 (peft).
    return Loading(method, "cuda", "bfloat16" if accelerator.bf16 else "float32", autocast)


def inference_loading(accelerator: Accelerator) -> Loading:
    """Scoring a version: on the job's GPU in bf16 where it has one (unquantised, as it is served)."""
    if accelerator.cuda:
        return Loading("eval", "cuda", "bfloat16" if accelerator.bf16 else "float32")
    return Loading("eval", "cpu", "float32")


def encode(tokenizer, row: dict, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) for one chat/completion row; labels are IGNORE except on the answer."""
    if "messages" in row:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        answer = messages[-1]["content"]
    elif "prompt" in row:
        prompt, answer = row["prompt"], row["completion"]
    else:
        prompt, answer = row["text"], str(row["label"])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return ids, labels


def _batches(examples: list, size: int, rng: random.Random):
    order = list(range(len(examples)))
    rng.shuffle(order)
    for start in range(0, len(order), size):
        yield [examples[i] for i in order[start : start + size]]


def _collate(batch, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        attention[i, : len(ids)] = 1
    return input_ids, labels, attention


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens_per_second: float
    eval_loss: float | None = None


class Cancelled(Exception):
    pass


def train(
    *,
    base_dir: Path,
    output_dir: Path,
    train_rows: list[dict],
    eval_rows: list[dict],
    hp: Hyperparameters,
    on_progress: Callable[[Progress], None] = lambda p: None,
    on_checkpoint: Callable[[Path, int], None] = lambda path, step: None,
    resume_dir: Path | None = None,
    resume_step: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    loading: Loading | None = None,
) -> dict:
    """Fine-tune and save the adapter (or full model) to ``output_dir``; return final metrics.

    Every ``checkpoint_every`` steps a checkpoint is saved beside ``output_dir`` and handed to
    ``on_checkpoint``, which stores it: its folder is removed once the callback returns."""
    from portfolio.registry.jsonfiles import refuse_oversized

    # transformers reads the configs and the tokenizer whole: one past its cap fails the job, not the node.
    refuse_oversized(base_dir)
    import torch
    from transformers import AutoTokenizer

    loading = loading or loading_for(hp.method, Accelerator.detect())
    torch.manual_seed(hp.seed)
    rng = random.Random(hp.seed)  # noqa: S311 - batch order, not security
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [e for e in (encode(tokenizer, r, hp.max_length) for r in train_rows) if e]
    eval_examples = [e for e in (encode(tokenizer, r, hp.max_length) for r in eval_rows) if e]
    if not examples:
        # Registered, an adapter trained on nothing would be its base under a new name.
        raise ValueError(
            f"No training row keeps any of its answer within max_length={hp.max_length} tokens: every "
            "prompt fills it. Raise max_length or shorten the prompts."
        )
    model = load_model(base_dir, hp, loading, resume_dir)
    model.train()
    device = torch.device(loading.device)
    steps_per_epoch = math.ceil(len(examples) / hp.batch_size)
    total = steps_per_epoch * hp.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.05, 1 - s / max(total, 1)))
    stopping = EarlyStopping(hp.early_stopping_patience if eval_examples else 0)
    restored = resume_dir is not None and _restore_state(resume_dir, optimizer, scheduler, stopping)
    # The eval loss is measured EVALS_PER_EPOCH times an epoch (at evenly spaced steps) and at the end.
    eval_steps = {
        epoch * steps_per_epoch + math.ceil(steps_per_epoch * (k + 1) / EVALS_PER_EPOCH)
        for epoch in range(hp.epochs)
        for k in range(EVALS_PER_EPOCH)
    } | {total}
    step, losses = 0, []
    started, tokens = time.monotonic(), 0
    stopped_at: int | None = None
    current_eval: float | None = None  # the eval loss of the weights as they are now, once measured
    for epoch in range(hp.epochs):
        for batch in _batches(examples, hp.batch_size, rng):
            step += 1
            if step <= resume_step:
                if not restored:
                    scheduler.step()  # a checkpoint without its optimizer state: at least the same rate
                continue  # already done before the resume (same seed, same order)
            if should_stop():
                raise Cancelled()
            input_ids, labels, attention = (t.to(device) for t in _collate(batch, pad_id))
            with _autocast(loading):
                loss = answer_loss(model, input_ids, attention, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            tokens += int(attention.sum())
            losses.append(loss.item())  # one device sync per step
            if not math.isfinite(losses[-1]):
                raise ValueError(
                    f"The training loss diverged ({losses[-1]}) at step {step}; lower the learning rate "
                    f"({hp.learning_rate})."
                )
            rate = tokens / max(time.monotonic() - started, 1e-6)
            eval_loss = current_eval = None
            if step in eval_steps:
                eval_loss = current_eval = evaluate_loss(model, eval_examples, pad_id, hp.batch_size, loading)
                # Patience running out at the last step cuts nothing short: the run ends there anyway.
                if eval_loss is not None and stopping.measured(eval_loss, step, model) and step < total:
                    stopped_at = step
            on_progress(Progress(step, total, epoch + 1, losses[-1], rate, eval_loss))
            if stopped_at is not None:
                break
            if hp.checkpoint_every and step % hp.checkpoint_every == 0 and step < total:
                checkpoint = output_dir.parent / f"checkpoint-{step}"
                model.save_pretrained(checkpoint, safe_serialization=True)
                _save_state(checkpoint / TRAINER_STATE, optimizer, scheduler, step, stopping)
                on_checkpoint(checkpoint, step)
                # Stored by on_checkpoint, and a resume reads it from the store: kept here, each checkpoint
                # (a full fine-tune's weights and optimizer state) would fill the node's disk for the run.
                shutil.rmtree(checkpoint)
        if stopped_at is not None:
            break
    trained_for = time.monotonic() - started
    restored_best = stopping.restore(model)
    if restored_best:
        current_eval = stopping.best_loss  # measured on the very weights put back
    if current_eval is None:
        current_eval = evaluate_loss(model, eval_examples, pad_id, hp.batch_size, loading)
    model.save_pretrained(output_dir, safe_serialization=True)
    if hp.method == "full":
        tokenizer.save_pretrained(output_dir)
    return {
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "eval_loss": current_eval,
        "steps": total,
        "epochs": hp.epochs,
        "learning_rate": hp.learning_rate,
        "train_rows": len(train_rows),
        "resumed_from_step": resume_step,
        "resumed_with_optimizer_state": bool(restored),
        "steps_trained": max((stopped_at or total) - resume_step, 0),  # by this attempt
        "stopped_early_at_step": stopped_at,
        # The training loop's own time, eval-loss measurements included (not loading or saving).
        "train_seconds": round(trained_for, 1),
        "best_eval_step": stopping.best_step,
        "restored_best": restored_best,
        "device": loading.device,
        "precision": loading.describe(),
    }


def load_model(base_dir: Path, hp: Hyperparameters, loading: Loading, resume_dir: Path | None) -> Any:
    """The model to train: the base (4-bit for QLoRA) with a new or resumed adapter, or all weights
    (from the checkpoint when resuming a full fine-tune)."""
    from transformers import AutoConfig

    from training.lora_targets import model_class_for, peft_targets

    kwargs = loading.from_pretrained_kwargs()
    source = resume_dir if hp.method == "full" and resume_dir is not None else base_dir
    # A transformers model, then perhaps its peft wrapper: both train alike, which no stub says. Loaded by
    # the class its config calls for (a vision-language model with its vision tower, left frozen).
    model: Any = model_class_for(AutoConfig.from_pretrained(source)).from_pretrained(source, **kwargs)
    if hp.method not in LORA_METHODS:
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if loading.quantization is not None:
        from peft import prepare_model_for_kbit_training

        # Norms and the head in float32, inputs that carry gradients, and activation checkpointing: what
        # training adapters over frozen 4-bit weights needs to be stable and to fit.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model.config.use_cache = False  # no KV cache under gradient checkpointing
    if resume_dir is not None:
        return PeftModel.from_pretrained(model, resume_dir, is_trainable=True)
    # Settings left unresolved (a caller that skipped ``resolved``): those of an unknown architecture.
    rank = hp.lora_r or rank_for(0)
    targets = peft_targets(model, hp.target_modules or list(FALLBACK_MODULES))
    dropout = hp.lora_dropout
    if targets.get("target_parameters") and dropout:
        # peft adapts fused expert weights (3-D parameters) only without dropout.
        print(f"experts adapted ({', '.join(targets['target_parameters'])}): LoRA dropout 0", flush=True)
        dropout = 0.0
    return get_peft_model(
        model,
        LoraConfig(
            r=rank,
            lora_alpha=hp.lora_alpha or 2 * rank,
            lora_dropout=dropout,
            task_type="CAUSAL_LM",
            **targets,
        ),
    )


def _autocast(loading: Loading):
    """bf16 matrix products over the model's own weights on the GPU; nothing on the CPU."""
    if loading.autocast is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=loading.device, dtype=getattr(torch, loading.autocast))


def _save_state(path: Path, optimizer, scheduler, step: int, stopping: EarlyStopping | None = None) -> None:
    """The optimizer's moments, the schedule, the random state (dropout) and early stopping's record (the
    best eval loss so far and its adapter weights) at ``step``."""
    import torch

    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "early_stopping": stopping.state() if stopping is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()  # dropout on the GPU draws from its own generator
    torch.save(state, path)


def _restore_state(resume_dir: Path, optimizer, scheduler, stopping: EarlyStopping | None = None) -> bool:
    """Load a checkpoint's trainer state; False for a checkpoint that has none (weights only)."""
    import torch

    path = resume_dir / TRAINER_STATE
    if not path.exists():
        return False
    # weights_only: tensors and plain values only, never arbitrary pickled objects. Loaded on the CPU: the
    # optimizer moves its moments to its parameters' device.
    state = torch.load(path, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if stopping is not None and state.get("early_stopping"):
        stopping.load(state["early_stopping"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    return True


def evaluate_loss(
    model, examples: list, pad_id: int, batch_size: int, loading: Loading | None = None
) -> float | None:
    import torch

    if not examples:
        return None
    loading = loading or Loading("eval", "cpu", "float32")
    device = torch.device(loading.device)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = _collate(examples[start : start + batch_size], pad_id)
            input_ids, labels, attention = (t.to(device) for t in batch)
            with _autocast(loading):
                loss = answer_loss(model, input_ids, attention, labels)
            total += float(loss) * len(examples[start : start + batch_size])
            count += len(examples[start : start + batch_size])
    model.train()
    return total / count
