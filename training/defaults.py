"""The fine-tune defaults: which layers LoRA adapts, its rank, the epochs and the learning rate, chosen from
the training rows and the base's architecture when a job leaves them blank (``Hyperparameters.resolved``).
The rule is documented in benchmarks/README.md ("Training defaults").

Pure of Django; ``Architecture.read`` builds the model on the meta device, so no weight is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from training import lora_targets
from training.lora_targets import ATTENTION, HYBRID, MLP, MOE, STATE, STATE_SPACE, TARGET_CHOICES

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


@dataclass(frozen=True)
class Architecture:
    """What the defaults need to know of a base: its ``model_type``, its parameter count and the names of
    the layers LoRA may adapt (the head, embeddings and any vision tower left out); read from a config, also
    its family and those names grouped by what they do, with the full names of the layers
    (``training.lora_targets``)."""

    model_type: str
    parameters: int
    linear_modules: frozenset[str]
    family: str = lora_targets.DENSE
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    paths: frozenset[str] = frozenset()

    @classmethod
    def read(cls, base_dir: Path) -> Architecture:
        """From the base's ``config.json``: the model is built on the meta device (no weights are read or
        allocated) and its modules listed."""
        import torch
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(base_dir)
        layers = lora_targets.layer_count(config)
        if layers > lora_targets.MAX_LAYERS:
            raise ValueError(f"the config declares {layers} layers (more than {lora_targets.MAX_LAYERS})")
        with torch.device("meta"):
            model = lora_targets.model_class_for(config).from_config(config)
        found = lora_targets.survey(model, config)
        return cls(
            model_type=str(getattr(config, "model_type", "")),
            parameters=sum(p.numel() for p in model.parameters()),
            linear_modules=frozenset(name for names in found.groups.values() for name in names),
            family=found.family,
            groups=found.groups,
            paths=found.paths,
        )

    def grouped(self) -> dict[str, tuple[str, ...]]:
        """The names by group; an architecture known only by its names (no survey) grouped by the names
        architectures give their attention and MLP layers."""
        if self.groups:
            return self.groups
        present = self.linear_modules
        attention = next((group for group in ATTENTION_MODULES if set(group) <= present), ())
        mlp = next((group for group in MLP_MODULES if set(group) <= present), ())
        return {ATTENTION: attention, MLP: tuple(name for name in mlp if name not in attention)}

    def choices(self) -> list[str]:
        """The ``lora_targets`` choices this base offers: those whose last group it has."""
        grouped = self.grouped()
        return [choice for choice, groups in TARGET_CHOICES.items() if grouped.get(groups[-1])]

    def unknown(self, names: list[str]) -> list[str]:
        """The names that are no layer LoRA may adapt in this base."""
        return lora_targets.unknown_targets(names, self.paths or self.linear_modules)


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


def target_modules_for(architecture: Architecture | None, train_rows: int, choice: str = "") -> list[str]:
    """The layers LoRA adapts. ``choice`` (a ``TARGET_CHOICES`` key) names the groups; without one, by
    family: a dense base (a vision-language model's language model, a speech model) its attention
    projections and, from ``MLP_FROM_ROWS`` training rows on or on a base of under 1B parameters, its MLP's
    too (cheap there, and what a small base needs to learn a new output format fast); a mixture of experts
    its attention only (every expert would get an adapter of its own); a state-space model its state
    projections; a hybrid its attention and state projections. Only names the base has; an unknown
    architecture gets q/k/v/o."""
    if architecture is None:
        return list(FALLBACK_MODULES)
    grouped = architecture.grouped()
    if choice:
        wanted = TARGET_CHOICES[choice]
    elif architecture.family == MOE:
        wanted = (ATTENTION,)
    elif architecture.family == STATE_SPACE:
        wanted = (STATE,)
    elif architecture.family == HYBRID:
        wanted = (ATTENTION, STATE)
    elif train_rows >= MLP_FROM_ROWS or architecture.parameters < SMALL_BASE:
        wanted = (ATTENTION, MLP)
    else:
        wanted = (ATTENTION,)
    chosen: list[str] = []
    for group in wanted:
        chosen += [name for name in grouped.get(group, ()) if name not in chosen]
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
    lora_targets: str = ""  # a TARGET_CHOICES key, or "": chosen from the architecture's family
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
                "target_modules": list(self.target_modules)
                or target_modules_for(architecture, train_rows, self.lora_targets),
            }
        )
