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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
# Saved beside the weights in each checkpoint: what a resumed run needs to continue as if never stopped.
TRAINER_STATE = "trainer_state.pt"


LORA_METHODS = frozenset({"lora", "qlora"})

# The linear layers LoRA may adapt, by the names architectures give them: attention first, then the MLP.
# Llama, Mistral, Qwen2/3, Gemma 1-3, SmolLM, OLMo, Granite: q/k/v/o and gate/up/down; Phi-3: fused qkv and
# gate_up; GPT-2 and StarCoder: c_attn/c_proj and c_fc; GPT-NeoX, Falcon, Bloom: query_key_value/dense and
# dense_h_to_4h/dense_4h_to_h; OPT, Phi-1/2: q/k/v with out_proj or dense, and fc1/fc2.
ATTENTION_MODULES = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("qkv_proj", "o_proj"),
    ("q_proj", "k_proj", "v_proj", "out_proj"),
    ("q_proj", "k_proj", "v_proj", "dense"),
    ("query_key_value", "dense"),
    ("c_attn",),
    ("Wqkv", "out_proj"),
)
MLP_MODULES = (
    ("gate_proj", "up_proj", "down_proj"),
    ("gate_up_proj", "down_proj"),
    ("w1", "w2", "w3"),
    ("fc1", "fc2"),
    ("dense_h_to_4h", "dense_4h_to_h"),
    ("c_fc", "c_proj"),
)
# What a base of unknown architecture is given (and what adapters were trained on before the rule).
FALLBACK_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Early stopping: the eval loss is measured this many times per epoch; training stops after
# ``early_stopping_patience`` measurements in a row without a new best (by at least MIN_IMPROVEMENT,
# relative), and the adapter of the best one is the one saved.
EVALS_PER_EPOCH = 2
MIN_IMPROVEMENT = 0.01


@dataclass(frozen=True)
class Architecture:
    """What the defaults need to know of a base: its ``model_type``, its parameter count and the names of
    its linear layers (the last part of each module's name, the head and embeddings left out)."""

    model_type: str
    parameters: int
    linear_modules: frozenset[str]

    @classmethod
    def read(cls, base_dir: Path) -> Architecture:
        """From the base's ``config.json``: the model is built on the meta device (no weights are read or
        allocated) and its modules listed."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(base_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        names = set()
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            # Linear layers, and GPT-2's Conv1D (a linear layer with transposed weights), which peft adapts.
            if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
                names.add(leaf)
        names -= {"lm_head", "embed_out", "score", "classifier"}
        return cls(
            model_type=str(getattr(config, "model_type", "")),
            parameters=sum(p.numel() for p in model.parameters()),
            linear_modules=frozenset(names),
        )


def architecture_of(base_dir: Path) -> Architecture | None:
    """The base's architecture, or None (and the defaults for an unknown one) when transformers cannot
    build it from its config (a model type it does not know, a config that needs remote code)."""
    try:
        return Architecture.read(base_dir)
    except (ValueError, KeyError, OSError, ImportError, TypeError) as exc:
        print(
            f"could not read the base's architecture ({exc.__class__.__name__}: {exc}); default modules",
            flush=True,
        )
        return None


def target_modules_for(architecture: Architecture | None, train_rows: int) -> list[str]:
    """The layers LoRA adapts: the attention projections and, from ``MLP_FROM_ROWS`` training rows on or
    on a base of under 1B parameters, the MLP's too (cheap there, and what a small base needs to learn a
    new output format fast). Only names the base has; an unknown architecture gets q/k/v/o."""
    if architecture is None:
        return list(FALLBACK_MODULES)
    present = architecture.linear_modules
    attention = next((list(group) for group in ATTENTION_MODULES if set(group) <= present), [])
    chosen = list(attention)
    if train_rows >= MLP_FROM_ROWS or architecture.parameters < SMALL_BASE:
        mlp = next((list(group) for group in MLP_MODULES if set(group) <= present), [])
        chosen += [name for name in mlp if name not in chosen]
    return chosen or list(FALLBACK_MODULES)


MLP_FROM_ROWS = 1_000
SMALL_BASE = 1_000_000_000


def rank_for(train_rows: int) -> int:
    """LoRA rank: 8 below 1,000 training rows, 16 from there (what a deployment's default max_lora_rank
    of 16 serves; more rank than rows can teach only overfits)."""
    return 8 if train_rows < 1_000 else 16


def epochs_for(train_rows: int) -> int:
    """About 180 row passes in all, 2 to 10 epochs (one from 100,000 rows on): tiny sets need many passes,
    large ones few. On ticket routing (60 rows, SmolLM2-135M, the loss on the answer only, all linear layers
    at 2e-3) the eval loss is lowest after about 1.5 epochs and early stopping ends the run within the
    third (benchmarks/README.md, "The thesis")."""
    if train_rows >= 100_000:
        return 1
    return max(2, min(10, math.ceil(180 / max(train_rows, 1))))


def learning_rate_for(method: str, train_rows: int, parameters: int | None) -> float:
    """LoRA and QLoRA: 2e-3 below 1,000 rows (few steps must go far), 1e-3 below 10,000, then 5e-4, halved
    for bases of 3B parameters or more and again from 30B. Full fine-tuning: 2e-5."""
    if method not in LORA_METHODS:
        return 2e-5
    rate = 2e-3 if train_rows < 1_000 else 1e-3 if train_rows < 10_000 else 5e-4
    if parameters is not None and parameters >= 3_000_000_000:
        rate /= 2
    if parameters is not None and parameters >= 30_000_000_000:
        rate /= 2
    return rate


@dataclass
class Hyperparameters:
    """A run's settings. Zero (or an empty list) means "chosen by ``resolved``" from the training rows and the
    base's architecture: the rule is in ``epochs_for``, ``learning_rate_for``, ``rank_for`` and
    ``target_modules_for``, documented in benchmarks/README.md ("Training defaults")."""

    method: str = "lora"  # lora | qlora | full
    epochs: int = 0  # 0: chosen from the dataset size
    learning_rate: float = 0.0  # 0: chosen from the method, the dataset size and the base's size
    batch_size: int = 4
    lora_r: int = 0  # 0: chosen from the dataset size
    lora_alpha: int = 0  # 0: twice the rank
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty: chosen from the architecture
    max_length: int = 512
    seed: int = 0
    checkpoint_every: int = 50
    # Eval-loss measurements without a new best before training stops (0: never stops early).
    early_stopping_patience: int = 2

    def resolved(self, train_rows: int, architecture: Architecture | None = None) -> Hyperparameters:
        """Every automatic value chosen; values set explicitly are kept as they are."""
        rank = self.lora_r or rank_for(train_rows)
        return Hyperparameters(
            **{
                **self.__dict__,
                "epochs": self.epochs or epochs_for(train_rows),
                "learning_rate": self.learning_rate
                or learning_rate_for(
                    self.method, train_rows, architecture.parameters if architecture else None
                ),
                "lora_r": rank,
                "lora_alpha": self.lora_alpha or 2 * rank,
                "target_modules": list(self.target_modules) or target_modules_for(architecture, train_rows),
            }
        )


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
    """Fine-tune and save the adapter (or full model) to ``output_dir``; return final metrics."""
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
    model = load_model(base_dir, hp, loading, resume_dir)
    model.train()
    device = torch.device(loading.device)
    examples = [e for e in (encode(tokenizer, r, hp.max_length) for r in train_rows) if e]
    eval_examples = [e for e in (encode(tokenizer, r, hp.max_length) for r in eval_rows) if e]
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
                loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            tokens += int(attention.sum())
            losses.append(loss.item())  # one device sync per step
            rate = tokens / max(time.monotonic() - started, 1e-6)
            eval_loss = None
            if step in eval_steps:
                eval_loss = evaluate_loss(model, eval_examples, pad_id, hp.batch_size, loading)
                if eval_loss is not None and stopping.measured(eval_loss, step, model):
                    stopped_at = step
            on_progress(Progress(step, total, epoch + 1, losses[-1], rate, eval_loss))
            if stopped_at is not None:
                break
            if hp.checkpoint_every and step % hp.checkpoint_every == 0 and step < total:
                checkpoint = output_dir.parent / f"checkpoint-{step}"
                model.save_pretrained(checkpoint, safe_serialization=True)
                _save_state(checkpoint / TRAINER_STATE, optimizer, scheduler, step, stopping)
                on_checkpoint(checkpoint, step)
        if stopped_at is not None:
            break
    trained_for = time.monotonic() - started
    restored_best = stopping.restore(model)
    model.save_pretrained(output_dir, safe_serialization=True)
    if hp.method == "full":
        tokenizer.save_pretrained(output_dir)
    return {
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "eval_loss": evaluate_loss(model, eval_examples, pad_id, hp.batch_size, loading),
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


class EarlyStopping:
    """Stop when the eval loss has not reached a new best (lower by ``MIN_IMPROVEMENT``, relative) for
    ``patience`` measurements in a row; keep the trainable weights of the best measurement and put them back
    at the end (the adapter's weights: a few MB; a full fine-tune keeps its last weights instead, as a copy
    of every weight would double the memory it needs). ``patience`` 0: never stops."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.since_best = 0
        self.best_weights: dict[str, Any] | None = None

    def measured(self, loss: float, step: int, model) -> bool:
        """Record one measurement; True: stop now."""
        if self.best_loss is None or loss < self.best_loss * (1 - MIN_IMPROVEMENT):
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            if self.patience and _is_adapter(model):
                self.best_weights = {
                    name: p.detach().to("cpu", copy=True)
                    for name, p in model.named_parameters()
                    if p.requires_grad
                }
            return False
        self.since_best += 1
        return bool(self.patience) and self.since_best >= self.patience

    def restore(self, model) -> bool:
        """Put the best measurement's weights back when a later one was worse; True when it did."""
        if self.best_weights is None or self.since_best == 0:
            return False
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.best_weights:
                    p.copy_(self.best_weights[name].to(p.device))
        return True

    def state(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "since_best": self.since_best,
            "best_weights": self.best_weights,
        }

    def load(self, state: dict) -> None:
        self.best_loss, self.best_step = state.get("best_loss"), state.get("best_step")
        self.since_best, self.best_weights = state.get("since_best", 0), state.get("best_weights")


def _is_adapter(model) -> bool:
    return hasattr(model, "peft_config")


def load_model(base_dir: Path, hp: Hyperparameters, loading: Loading, resume_dir: Path | None) -> Any:
    """The model to train: the base (4-bit for QLoRA) with a new or resumed adapter, or all weights
    (from the checkpoint when resuming a full fine-tune)."""
    from transformers import AutoModelForCausalLM

    kwargs = loading.from_pretrained_kwargs()
    source = resume_dir if hp.method == "full" and resume_dir is not None else base_dir
    # A transformers model, then perhaps its peft wrapper: both train alike, which no stub says.
    model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
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
    return get_peft_model(
        model,
        LoraConfig(
            r=rank,
            lora_alpha=hp.lora_alpha or 2 * rank,
            lora_dropout=hp.lora_dropout,
            target_modules=hp.target_modules or list(FALLBACK_MODULES),
            task_type="CAUSAL_LM",
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
                loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            total += float(loss) * len(examples[start : start + batch_size])
            count += len(examples[start : start + batch_size])
    model.train()
    return total / count
