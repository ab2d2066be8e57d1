"""A registered base's architecture (family, the layers LoRA may adapt) read from its stored ``config.json``
alone, for the start form and the checks made before a fine-tune is queued: the model is built on the meta
device, no weight is read. Results are kept per config (by its sha256) in this process: a form that asks
again for the same base costs nothing.

A base whose architecture cannot be read (no config.json: a GGUF file; a model type transformers does not
know; a damaged file) is "unknown": its target modules are not checked here, and the run chooses q/k/v/o.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path

from portfolio.errors import Invalid
from portfolio.registry.jsonfiles import MAX_JSON_BYTES
from portfolio.registry.models import ModelVersion
from portfolio.registry.storage import CorruptArtifact, read_text
from portfolio.registry.stores import default_store
from training.defaults import LORA_METHODS, Architecture, target_modules_for
from training.lora_targets import (
    CHOICE_LABELS,
    FAMILY_LABELS,
    GROUPS,
    LISTED_NAME_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TARGETS,
    NAME,
    TARGET_CHOICES,
    listed,
)

CONFIG = "config.json"
CACHED_CONFIGS = 64
_cache: OrderedDict[str, Architecture | None] = OrderedDict()


def of_version(version: ModelVersion) -> Architecture | None:
    """The architecture of ``version``'s stored config.json, or None when it cannot be read."""
    artifact = version.artifact
    entry = artifact.manifest().get(CONFIG) if artifact is not None else None
    if artifact is None or entry is None or entry.size > MAX_JSON_BYTES:
        return None
    if entry.sha256 in _cache:
        _cache.move_to_end(entry.sha256)
        return _cache[entry.sha256]
    architecture: Architecture | None
    try:
        text = read_text(default_store(), artifact.manifest(), CONFIG, limit=MAX_JSON_BYTES)
        with tempfile.TemporaryDirectory(prefix="config-") as folder:
            (Path(folder) / CONFIG).write_text(text or "{}", encoding="utf-8")
            architecture = Architecture.read(Path(folder))
    # What transformers raises for a config it cannot build, and a missing or damaged stored file.
    except (CorruptArtifact, OSError, ValueError, KeyError, TypeError, AttributeError, ImportError):
        architecture = None
    _cache[entry.sha256] = architecture
    while len(_cache) > CACHED_CONFIGS:
        _cache.popitem(last=False)
    return architecture


def check_names(value: object) -> list[str]:
    """``target_modules`` as a job may give it: a list of up to ``MAX_TARGETS`` layer names."""
    field = "hyperparameters.target_modules"
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise Invalid(f"{field}: a list of layer names (q_proj, experts.gate_up_proj, ...).")
    if len(value) > MAX_TARGETS:
        raise Invalid(f"{field}: at most {MAX_TARGETS} names (a name matches that layer in every block).")
    for name in value:
        if len(name) > MAX_NAME_LENGTH:
            raise Invalid(f"{field}: a name is at most {MAX_NAME_LENGTH} characters.")
        if not NAME.fullmatch(name):
            raise Invalid(
                f"{field}: {shown(name)} is not a layer name (letters, digits and _, parts joined by dots)."
            )
    return list(dict.fromkeys(value))


def check_choice(value: object) -> str:
    if value not in ("", *TARGET_CHOICES):
        raise Invalid(
            f"hyperparameters.lora_targets: one of {', '.join(TARGET_CHOICES)}, or blank (chosen from the "
            "base's family)."
        )
    return str(value)


def shown(name: str) -> str:
    return repr(name if len(name) <= LISTED_NAME_LENGTH else name[: LISTED_NAME_LENGTH - 1] + "…")


def adaptable(architecture: Architecture) -> str:
    """The names LoRA may adapt in this base, by group, bounded: "attention: q_proj, k_proj; mlp: ..."."""
    grouped = architecture.grouped()
    return listed(f"{name} ({group})" for group in GROUPS for name in grouped.get(group, ()))


def check_targets(version: ModelVersion, hyperparameters: dict, method: str) -> None:
    """Refuse names of layers ``version`` does not have, and a ``lora_targets`` choice of a group it has
    none of, before a job is queued; an unknown architecture is not checked."""
    names = hyperparameters.get("target_modules") or []
    choice = hyperparameters.get("lora_targets") or ""
    if method not in LORA_METHODS or not (names or choice):
        return
    architecture = of_version(version)
    if architecture is None:
        return
    unknown = architecture.unknown(names)
    if unknown:
        raise Invalid(
            f"hyperparameters.target_modules: {shown(unknown[0])} is not a layer LoRA can adapt in "
            f"{version.label} ({FAMILY_LABELS.get(architecture.family, architecture.family)}); it has: "
            f"{adaptable(architecture)}."
        )
    if choice and choice not in architecture.choices():
        missing = TARGET_CHOICES[choice][-1]
        raise Invalid(
            f"hyperparameters.lora_targets: {version.label} has no {missing} layers to adapt; choose one of: "
            f"{', '.join(architecture.choices())}."
        )


def preview(version: ModelVersion, train_rows: int, choice: str = "") -> dict:
    """What the start form shows for a base: its family, the modules a job would adapt by default (or with
    ``choice``), the choices it offers and the names it has."""
    architecture = of_version(version)
    if architecture is None:
        return {"known": False, "chosen": target_modules_for(None, train_rows)}
    choices = architecture.choices()
    return {
        "known": True,
        "family": FAMILY_LABELS.get(architecture.family, architecture.family),
        "chosen": target_modules_for(architecture, train_rows, choice if choice in choices else ""),
        "choices": [(key, CHOICE_LABELS[key]) for key in choices],
        "adaptable": adaptable(architecture),
        "parameters": architecture.parameters,
    }
