"""Which layers of a base LoRA may adapt, grouped by what they do, and the base's family (dense, MoE,
state-space, hybrid, vision-language, speech): read off the model built on the meta device
(``training.defaults.Architecture.read``) and off the real model the trainer loads (``peft_targets``).

Groups: ``attention`` (the attention projections), ``mlp`` (dense MLPs, shared experts included),
``experts`` (a mixture of experts' projections: 3-D parameters in transformers 5, adapted through peft's
``target_parameters``), ``state`` (state-space and other fixed-state mixers: Mamba's ``in_proj``/``x_proj``/
``out_proj``, Gated DeltaNet, short convolutions), ``router`` and ``other`` (never chosen by default). A
vision tower, a multimodal projector and the output head are not offered: a text fine-tune leaves them be.

A layer is named by its last part (``q_proj``); a name two groups share (``out_proj`` in LFM2's attention and
in its convolutions, ``c_proj`` in GPT-2's attention and MLP) is qualified by its parent (``self_attn.out_proj``).
peft matches a name against the end of each module's full name, and so does ``unknown_targets``.

What a survey found is stored with a base version (``facts_of``, at import, where torch is installed) so
that a process without torch (the web server) checks names and previews layers from it.

Pure of Django; torch is imported only by the functions that walk a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ATTENTION, MLP, EXPERTS, STATE, ROUTER, OTHER = "attention", "mlp", "experts", "state", "router", "other"
GROUPS = (ATTENTION, STATE, MLP, EXPERTS, ROUTER, OTHER)

DENSE, MOE, STATE_SPACE, HYBRID = "dense", "moe", "state-space", "hybrid"
VISION_LANGUAGE, SPEECH, ENCODER_DECODER = "vision-language", "speech", "encoder-decoder"
FAMILY_LABELS = {
    DENSE: "dense decoder",
    MOE: "mixture of experts",
    STATE_SPACE: "state-space",
    HYBRID: "hybrid (attention and state-space layers)",
    VISION_LANGUAGE: "vision-language (the language model is adapted, not the vision tower)",
    SPEECH: "speech (encoder-decoder)",
    ENCODER_DECODER: "encoder-decoder",
}

# The choice a job may make instead of naming modules (``lora_targets``): the groups each one adapts.
TARGET_CHOICES: dict[str, tuple[str, ...]] = {
    "attention": (ATTENTION,),
    "attention+mlp": (ATTENTION, MLP),
    "attention+experts": (ATTENTION, EXPERTS),
    "attention+state": (ATTENTION, STATE),
}
CHOICE_LABELS = {
    "attention": "Attention only",
    "attention+mlp": "Attention and the dense MLP",
    "attention+experts": "Attention and the experts' projections",
    "attention+state": "Attention and the state-space projections",
}

# Limits on what a job may name (form and API), and on what a refusal lists back.
MAX_TARGETS = 32
MAX_NAME_LENGTH = 100
MAX_LISTED = 24
LISTED_NAME_LENGTH = 60
NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# Building a model on the meta device takes time in proportion to its modules: a config claiming more
# layers than any real model has is not built (the largest open models have under 200).
MAX_LAYERS = 512

# Names of a layer by what it does, where its parent's class does not say (GPT-2's Conv1D, Whisper's fc1/fc2
# on the decoder layer itself).
ATTENTION_NAMES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "out_proj", "query_key_value", "c_attn", "Wqkv"}
)
MLP_NAMES = frozenset(
    {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "w1", "w2", "w3", "fc1", "fc2", "c_fc"}
    | {"dense_h_to_4h", "dense_4h_to_h", "input_linear", "output_linear"}
)
MLP_PARENTS = frozenset({"mlp", "feed_forward", "ffn", "shared_expert", "shared_experts", "shared_mlp"})
ROUTER_NAMES = frozenset({"gate", "router", "shared_expert_gate"})
# Words in the class name of a fixed-state mixer: Mamba 1/2 and the hybrids' mixers (Jamba, Falcon-H1,
# Bamba, Granite 4, Nemotron-H, Zamba2), Gated DeltaNet (Qwen3-Next), LFM2's short convolutions, RWKV.
STATE_WORDS = ("Mamba", "Mixer", "DeltaNet", "ShortConv", "Rwkv", "RWKV", "Recurrent", "Ssm", "SSM")
MLP_WORDS = ("MLP", "FeedForward", "FFN")
# A Mamba mixer's output projection is not offered: the Mamba kernels read its weight directly (an adapter
# on it would be bypassed), and peft refuses it on mamba, mamba2, falcon_h1 and nemotron_h models.
KERNEL_READ = frozenset({"out_proj"})
HEADS = frozenset({"lm_head", "embed_out", "score", "classifier", "proj_out"})
# Children of a multimodal model that are not its language model, where the language model cannot be
# found by its config.
TOWER_NAMES = frozenset(
    {"vision_tower", "vision_model", "visual", "multi_modal_projector", "connector", "audio_tower"}
    | {"vision_encoder", "image_encoder", "audio_encoder", "vision_embed_tokens", "mm_projector"}
)


@dataclass(frozen=True)
class Survey:
    """What a model offers LoRA: its family, the names of each group in model order, the full names of every
    adaptable module and expert parameter (to check names a job gives), and the towers left out."""

    family: str
    groups: dict[str, tuple[str, ...]]
    paths: frozenset[str]
    towers: tuple[str, ...] = ()
    parameter_names: frozenset[str] = field(default_factory=frozenset)


def is_linear(module: Any) -> bool:
    import torch

    # GPT-2's Conv1D is a linear layer with transposed weights, which peft adapts.
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def layer_count(config: Any) -> int:
    """The most layers any part of the config declares (text, vision, encoder, decoder)."""
    counts = []
    for part in (config, *[getattr(config, name, None) for name in ("text_config", "vision_config")]):
        for key in (
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "encoder_layers",
            "decoder_layers",
            "depth",
        ):
            value = getattr(part, key, None) if part is not None else None
            if isinstance(value, int):
                counts.append(value)
    return max(counts, default=0)


def model_class_for(config: Any) -> Any:
    """The transformers auto class a fine-tune loads the base with: encoder-decoders (Whisper) as
    sequence-to-sequence, models with a vision tower as image-text-to-text, the rest as causal LMs."""
    import transformers

    if getattr(config, "is_encoder_decoder", False):
        names = ["AutoModelForSpeechSeq2Seq", "AutoModelForSeq2SeqLM"]
    elif getattr(config, "vision_config", None) is not None:
        names = ["AutoModelForImageTextToText", "AutoModelForCausalLM"]
    else:
        names = ["AutoModelForCausalLM"]
    for name in names:
        auto = getattr(transformers, name)
        if type(config) in auto._model_mapping:
            return auto
    return getattr(transformers, names[-1])  # its own error names the configuration it does not know


def towers_of(model: Any, config: Any) -> tuple[str, ...]:
    """Full names of the parts of a multimodal model beside its language model (vision tower, projector).
    The language model is the module built from the config's text config; its siblings are the towers."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text_config is config or getattr(config, "is_encoder_decoder", False):
        return ()
    for path, module in model.named_modules():
        if path and getattr(module, "config", None) is text_config:
            parent_path = path.rpartition(".")[0]
            parent = model.get_submodule(parent_path) if parent_path else model
            return tuple(
                f"{parent_path}.{name}" if parent_path else name
                for name, _ in parent.named_children()
                if f"{parent_path}.{name}".lstrip(".") != path and name not in HEADS
            )
    return tuple(path for path, _ in model.named_modules() if path.rpartition(".")[2] in TOWER_NAMES)


def _inside(path: str, towers: Iterable[str]) -> bool:
    return any(path == tower or path.startswith(tower + ".") for tower in towers)


def is_mamba(parent_class: str) -> bool:
    return "Attention" not in parent_class and ("Mamba" in parent_class or "Mixer" in parent_class)


def group_of(path: str, parent_class: str) -> str:
    """The group of a linear layer, from its parent module's class and its own name."""
    parts = path.split(".")
    leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
    if "experts" in parts[:-1]:
        return EXPERTS  # one Linear per expert (older transformers, remote code): ``experts.0.w1``
    if leaf in ROUTER_NAMES or "Router" in parent_class:
        return ROUTER
    if "Attention" not in parent_class and any(word in parent_class for word in STATE_WORDS):
        return STATE
    if "Attention" in parent_class:
        return ATTENTION
    if parent in MLP_PARENTS or any(word in parent_class for word in MLP_WORDS):
        return MLP
    if leaf in ATTENTION_NAMES:
        return ATTENTION
    if leaf in MLP_NAMES:
        return MLP
    return OTHER


def _entries(model: Any, towers: tuple[str, ...]) -> Iterator[tuple[str, str, bool]]:
    """(group, full name, whether it is a parameter) of every adaptable module and expert parameter
    outside the towers and heads."""
    modules = dict(model.named_modules())
    for path, module in modules.items():
        if not path or not is_linear(module) or _inside(path, towers):
            continue
        if path.rpartition(".")[2] in HEADS:
            continue
        parent_path = path.rpartition(".")[0]
        parent_class = type(modules[parent_path]).__name__
        if path.rpartition(".")[2] in KERNEL_READ and is_mamba(parent_class):
            continue
        yield group_of(path, parent_class), path, False
    for path in expert_parameters(model, towers):
        yield EXPERTS, path, True


def expert_parameters(model: Any, towers: tuple[str, ...]) -> list[str]:
    """A mixture of experts' fused projections (transformers 5): one 3-D weight for all the experts of a
    layer, held by a module named ``experts``."""
    modules = dict(model.named_modules())
    found = []
    for path, parameter in model.named_parameters():
        parent_path = path.rpartition(".")[0]
        if parameter.dim() != 3 or _inside(path, towers):
            continue
        if parent_path.rpartition(".")[2] == "experts" or "Experts" in type(modules[parent_path]).__name__:
            found.append(path)
    return found


def survey(model: Any, config: Any) -> Survey:
    """The groups, names and family of ``model`` (built on the meta device or loaded)."""
    towers = towers_of(model, config)
    entries = list(_entries(model, towers))
    leaf_groups: dict[str, set[str]] = {}
    for group, path, is_parameter in entries:
        if not is_parameter:
            leaf_groups.setdefault(path.rpartition(".")[2], set()).add(group)
    groups: dict[str, list[str]] = {group: [] for group in GROUPS}
    parameter_names = set()
    for group, path, is_parameter in entries:
        parts = path.split(".")
        if is_parameter:
            # Named with their module: ``experts.gate_up_proj``, never a bare name a linear layer may share.
            name = ".".join(parts[-2:])
            parameter_names.add(name)
        elif len(leaf_groups[parts[-1]]) > 1 and len(parts) > 1:
            name = ".".join(parts[-2:])
        else:
            name = parts[-1]
        if name not in groups[group]:
            groups[group].append(name)
    return Survey(
        family=family_of(config, groups, towers),
        groups={group: tuple(names) for group, names in groups.items() if names},
        paths=frozenset(path for _, path, _ in entries),
        towers=towers,
        parameter_names=frozenset(parameter_names),
    )


def family_of(config: Any, groups: dict[str, list[str]], towers: tuple[str, ...]) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return SPEECH if getattr(config, "num_mel_bins", None) else ENCODER_DECODER
    if towers:
        return VISION_LANGUAGE
    if groups.get(STATE):
        return HYBRID if groups.get(ATTENTION) else STATE_SPACE
    if groups.get(EXPERTS):
        return MOE
    return DENSE


def unknown_targets(names: Iterable[str], paths: Iterable[str]) -> list[str]:
    """The names that match no adaptable module or expert parameter (peft's rule: the whole name, or its
    end after a dot)."""
    paths = list(paths)
    return [name for name in names if not any(p == name or p.endswith("." + name) for p in paths)]


def listed(names: Iterable[str]) -> str:
    """Names for a message, bounded in count and length: "q_proj, k_proj, ... (and 40 more)"."""
    names = list(names)
    shown = [
        name if len(name) <= LISTED_NAME_LENGTH else name[: LISTED_NAME_LENGTH - 1] + "…" for name in names
    ]
    more = len(shown) - MAX_LISTED
    return ", ".join(shown[:MAX_LISTED]) + (f" (and {more} more)" if more > 0 else "")


def peft_targets(model: Any, names: list[str]) -> dict[str, Any]:
    """``LoraConfig`` keywords adapting ``names`` of the loaded ``model``: the linear layers as
    ``target_modules``, fused expert weights as ``target_parameters``, and the towers of a multimodal
    model excluded (their layers share names with the language model's: ``q_proj``)."""
    towers = towers_of(model, model.config)
    modules = [path for path, module in model.named_modules() if is_linear(module)]
    experts = expert_parameters(model, towers)
    as_parameters = [
        name for name in names if unknown_targets([name], modules) and not unknown_targets([name], experts)
    ]
    kwargs: dict[str, Any] = {"target_modules": [name for name in names if name not in as_parameters] or None}
    if as_parameters:
        kwargs["target_parameters"] = as_parameters
    if towers:
        kwargs["exclude_modules"] = r"(?:{})(?:\..*)?".format("|".join(re.escape(tower) for tower in towers))
    return kwargs


# --- Stored with the version -------------------------------------------------------------------------
# The full names are kept as a tree of their parts in which numbered siblings with the same subtree are one
# key ("#0-3,5"), and a name that ends where longer ones go on is marked by an empty key: an 80-layer
# model's 560 names take under 400 bytes, where the list of them would take 20 KB in every version's row.
NUMBERED = "#"
END = ""


def facts_of(architecture: Any) -> dict:
    """What a base version stores of its ``training.defaults.Architecture``: all that the checks and the
    start form's preview use of it."""
    return {
        "model_type": architecture.model_type,
        "parameters": architecture.parameters,
        "family": architecture.family,
        "groups": {group: list(names) for group, names in architecture.groups.items()},
        "paths": packed(architecture.paths),
    }


def packed(paths: Iterable[str]) -> dict:
    """``paths`` (dotted names) as a tree of their parts, numbered parts with the same subtree merged."""
    tree: dict = {}
    for path in paths:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
        node[END] = {}
    return _merged(tree)


def _merged(node: dict) -> dict:
    if list(node) == [END]:
        return {}  # a name ends here and no longer one goes on: a leaf says so
    merged: dict = {}
    numbered: dict[str, tuple[dict, list[int]]] = {}
    for key, child in node.items():
        child = _merged(child)
        # Only numbers written as Python writes them: "007" would not come back as itself.
        if key.isdecimal() and key == str(int(key)):
            numbered.setdefault(json.dumps(child, sort_keys=True), (child, []))[1].append(int(key))
        else:
            merged[key] = child
    for child, numbers in numbered.values():
        merged[NUMBERED + _ranges(sorted(numbers))] = child
    return merged


def _ranges(numbers: list[int]) -> str:
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _numbers(ranges: str) -> Iterator[int]:
    for run in ranges.split(","):
        first, _, last = run.partition("-")
        yield from range(int(first), int(last or first) + 1)


def unpacked(tree: dict) -> frozenset[str]:
    """The dotted names ``packed`` made ``tree`` of."""
    paths: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        if not node:
            paths.add(prefix)
        for key, child in node.items():
            if key == END:
                paths.add(prefix)
                continue
            parts = (str(n) for n in _numbers(key[1:])) if key.startswith(NUMBERED) else (key,)
            for part in parts:
                walk(child, f"{prefix}.{part}" if prefix else part)

    if tree:
        walk(tree, "")
    return frozenset(paths)
