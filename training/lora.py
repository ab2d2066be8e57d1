"""The training loop itself: supervised fine-tuning of a causal LM with LoRA (or all weights), the loss on
the answer tokens only, with callbacks for progress, checkpoints and cancellation.

Pure of Django: it takes folders and rows, so it runs (and is tested) in the job's child process alone.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
# Saved beside the weights in each checkpoint: what a resumed run needs to continue as if never stopped.
TRAINER_STATE = "trainer_state.pt"


@dataclass
class Hyperparameters:
    method: str = "lora"  # lora | full
    epochs: int = 0  # 0: chosen from the dataset size
    learning_rate: float = 0.0  # 0: chosen from the method
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    max_length: int = 512
    seed: int = 0
    checkpoint_every: int = 50

    def resolved(self, train_rows: int) -> Hyperparameters:
        """Defaults that work for 0.1B-8B models: small datasets need more passes, LoRA a higher rate."""
        # Measured on ticket routing (SmolLM2, answer-only loss): eval loss flattens after ~200 row passes.
        epochs = self.epochs or max(2, min(8, math.ceil(240 / max(train_rows, 1))))
        rate = self.learning_rate or (1e-3 if self.method == "lora" else 2e-5)
        return Hyperparameters(**{**self.__dict__, "epochs": epochs, "learning_rate": rate})


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
) -> dict:
    """Fine-tune and save the adapter (or full model) to ``output_dir``; return final metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(hp.seed)
    rng = random.Random(hp.seed)  # noqa: S311 - batch order, not security
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A transformers model, then perhaps its peft wrapper: both train alike, which no stub says.
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if hp.method == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume_dir is not None:
            model = PeftModel.from_pretrained(model, resume_dir, is_trainable=True)
        else:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=hp.lora_r,
                    lora_alpha=hp.lora_alpha,
                    lora_dropout=hp.lora_dropout,
                    target_modules=hp.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
    elif resume_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(resume_dir, dtype=torch.float32)
    model.train()
    examples = [e for e in (encode(tokenizer, r, hp.max_length) for r in train_rows) if e]
    eval_examples = [e for e in (encode(tokenizer, r, hp.max_length) for r in eval_rows) if e]
    steps_per_epoch = math.ceil(len(examples) / hp.batch_size)
    total = steps_per_epoch * hp.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.05, 1 - s / max(total, 1)))
    restored = resume_dir is not None and _restore_state(resume_dir, optimizer, scheduler)
    step, losses = 0, []
    started, tokens = time.monotonic(), 0
    for epoch in range(hp.epochs):
        for batch in _batches(examples, hp.batch_size, rng):
            step += 1
            if step <= resume_step:
                if not restored:
                    scheduler.step()  # a checkpoint without its optimizer state: at least the same rate
                continue  # already done before the resume (same seed, same order)
            if should_stop():
                raise Cancelled()
            input_ids, labels, attention = _collate(batch, pad_id)
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            tokens += int(attention.sum())
            losses.append(loss.item())
            rate = tokens / max(time.monotonic() - started, 1e-6)
            eval_loss = None
            if step % steps_per_epoch == 0 or step == total:
                eval_loss = evaluate_loss(model, eval_examples, pad_id, hp.batch_size)
            on_progress(Progress(step, total, epoch + 1, float(loss), rate, eval_loss))
            if hp.checkpoint_every and step % hp.checkpoint_every == 0 and step < total:
                checkpoint = output_dir.parent / f"checkpoint-{step}"
                model.save_pretrained(checkpoint, safe_serialization=True)
                _save_state(checkpoint / TRAINER_STATE, optimizer, scheduler, step)
                on_checkpoint(checkpoint, step)
    model.save_pretrained(output_dir, safe_serialization=True)
    if hp.method == "full":
        tokenizer.save_pretrained(output_dir)
    return {
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "eval_loss": evaluate_loss(model, eval_examples, pad_id, hp.batch_size),
        "steps": total,
        "epochs": hp.epochs,
        "learning_rate": hp.learning_rate,
        "train_rows": len(train_rows),
        "resumed_from_step": resume_step,
        "resumed_with_optimizer_state": bool(restored),
        "steps_trained": max(total - resume_step, 0),  # by this attempt
    }


def _save_state(path: Path, optimizer, scheduler, step: int) -> None:
    """The optimizer's moments, the schedule and the random state (dropout) at ``step``."""
    import torch

    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
    }
    torch.save(state, path)


def _restore_state(resume_dir: Path, optimizer, scheduler) -> bool:
    """Load a checkpoint's trainer state; False for a checkpoint that has none (weights only)."""
    import torch

    path = resume_dir / TRAINER_STATE
    if not path.exists():
        return False
    # weights_only: tensors and plain values only, never arbitrary pickled objects.
    state = torch.load(path, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return True


def evaluate_loss(model, examples: list, pad_id: int, batch_size: int) -> float | None:
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            input_ids, labels, attention = _collate(examples[start : start + batch_size], pad_id)
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            total += float(loss) * len(examples[start : start + batch_size])
            count += len(examples[start : start + batch_size])
    model.train()
    return total / count
