"""A registered base's architecture (family, the layers LoRA may adapt), for the start form and the checks
made before a fine-tune is queued: from what the import stored with the version (``LORA_LAYERS`` in its
architecture facts, read where torch is installed), else read from its stored ``config.json``, the model
built on the meta device (no weight is read). Results read from a config are kept per config (by its
sha256) in this process: a form that asks again for the same base costs nothing.

The web server has no torch (its image is built without the train extra): a base imported before imports
stored its layers, and not read since by ``read_architectures`` where torch is, cannot be read there. That
is said once in the log, and the base is treated as one whose architecture cannot be read: "unknown", its
target modules not checked here (the start form says so). So is a base without a config.json (a GGUF
file), of a model type transformers does not know, or with a damaged file; the run chooses q/k/v/o.
"""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from pathlib import Path

from portfolio.errors import Invalid
from portfolio.registry.inspection import LORA_LAYERS
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
    facts_of,
    listed,
    unpacked,
)

CONFIG = "config.json"
CACHED_CONFIGS = 64
_cache: OrderedDict[str, Architecture | None] = OrderedDict()
_warned_without_torch = False
logger = logging.getLogger(__name__)


def read_facts(directory: Path) -> dict | None:
    """``facts_of`` the model whose ``config.json`` is in ``directory``, built on the meta device from the
    config (transformers' own classes, never the model's code; no weight allocated); ``{}`` when it cannot be
    built (a model type transformers does not know, a config needing remote code), None without torch or
    transformers. Registered as the registry's reader (``inspection.LAYER_READERS``) for every import."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return None
    try:
        return facts_of(Architecture.read(directory))
    # Whatever building the model raises: these facts only serve the fine-tune form's checks, and an import
    # must not fail for them.
    except Exception as exc:
        logger.info("layers LoRA may adapt not read from %s: %s: %s", directory.name, type(exc).__name__, exc)
        return {}


def of_version(version: ModelVersion) -> Architecture | None:
    """The architecture of ``version``: as its import stored it, else read from its stored config.json;
    None when neither can be had."""
    facts = version.architecture_facts if isinstance(version.architecture_facts, dict) else {}
    layers = facts.get(LORA_LAYERS)
    if layers == {}:
        return None  # the import found a config transformers cannot build: not tried again here
    stored = from_facts(layers)
    return stored if stored is not None else _read_config(version)


def from_facts(layers: object) -> Architecture | None:
    """The architecture ``training.lora_targets.facts_of`` stored; None where none was (or it is not one)."""
    if not isinstance(layers, dict) or not layers:
        return None
    try:
        groups = {group: tuple(layers["groups"][group]) for group in GROUPS if group in layers["groups"]}
        return Architecture(
            model_type=str(layers["model_type"]),
            parameters=int(layers["parameters"]),
            linear_modules=frozenset(name for names in groups.values() for name in names),
            family=str(layers["family"]),
            groups=groups,
            paths=unpacked(layers["paths"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _read_config(version: ModelVersion) -> Architecture | None:
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
    except ImportError as exc:  # this process has no torch (or transformers): said in the log, once
        _warn_without_torch(version, exc)
        architecture = None
    # What transformers raises for a config it cannot build, and a missing or damaged stored file.
    except (CorruptArtifact, OSError, ValueError, KeyError, TypeError, AttributeError):
        architecture = None
    _cache[entry.sha256] = architecture
    while len(_cache) > CACHED_CONFIGS:
        _cache.popitem(last=False)
    return architecture


def _warn_without_torch(version: ModelVersion, exc: ImportError) -> None:
    global _warned_without_torch
    if not _warned_without_torch:
        _warned_without_torch = True
        logger.warning(
            "The layers LoRA may adapt in %s (and any other base whose import did not store them) cannot be "
            "read in this process (%s): their target modules are not checked before a job is queued. Run "
            "`portfolio manage read_architectures` where the train extra is installed (the worker's image).",
            version.label,
            exc,
        )


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
    none of, before a job is queued; an architecture that cannot be had (``of_version``) is not checked,
    and the start form's preview says so."""
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
