"""Reading the architecture of versions imported before imports read it, from their stored files.

Only ``config.json`` and the first bytes of each safetensors file (its header) are read from the artifact
store, never the weights: on an S3 store that is a few KB per version, not gigabytes. Adapters take their
base's facts, as imports give them.

The layers LoRA may adapt (``inspection.LORA_LAYERS``) need torch and transformers: where they are not
installed (``portfolio migrate`` in the web server's image) a base without them is left as it is, said once,
and ``portfolio manage read_architectures`` where they are (the worker's image) gives them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import closing
from pathlib import Path

from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.registry import families, jsonfiles
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.inspection import (
    LORA_LAYERS,
    SHAPE_KEYS,
    InspectionError,
    lora_layers,
    read_safetensors_header,
)
from portfolio.registry.models import ModelVersion
from portfolio.registry.stores import default_store

logger = logging.getLogger(__name__)


def stored_config(version: ModelVersion) -> dict | None:
    """The stored ``config.json`` of a version; None without one."""
    files = {f["path"]: f for f in (version.artifact.files if version.artifact else [])}
    entry = files.get("config.json")
    if entry is None or entry["size"] > jsonfiles.MAX_JSON_BYTES:
        return None
    with closing(default_store().open_blob(entry["sha256"])) as handle:
        config = json.loads(handle.read(jsonfiles.MAX_JSON_BYTES + 1))
    return config if isinstance(config, dict) else None


def stored_lora_layers(config: dict) -> dict | None:
    """``inspection.lora_layers`` of a stored config (written to a folder of its own, as transformers reads
    a config from a folder)."""
    with tempfile.TemporaryDirectory(prefix="config-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return lora_layers(Path(folder))


def stored_architecture(version: ModelVersion) -> tuple[dict, dict] | None:
    """``(architecture facts, shape)`` of a base version from its stored files; None without a config."""
    store = default_store()
    files = {f["path"]: f for f in (version.artifact.files if version.artifact else [])}
    config = stored_config(version)
    if config is None:
        return None
    tensors: dict[str, list[int]] = {}
    for path, weights in files.items():
        if path.endswith(".safetensors"):
            with closing(store.open_blob(weights["sha256"])) as handle:
                header = read_safetensors_header(handle, path)
            tensors |= {k: list(v.get("shape") or []) for k, v in header.items() if k != "__metadata__"}
    text = families.text_config(config)
    shape = {key: text[key] for key in SHAPE_KEYS if key in text}
    facts = families.read(config, tensors, version.parameter_count)
    layers = stored_lora_layers(config)
    if layers is not None:
        facts[LORA_LAYERS] = layers
    return facts, shape


def read_missing_architectures(log=logger.info) -> int:
    """Give every ready version without a family its facts from its files, and every base without them the
    layers LoRA may adapt (``read_missing_lora_layers``); the number of versions given."""
    done = 0
    actor = Actor.for_system("registry.reinspect")
    pending = ModelVersion.objects.filter(family="", status=VersionStatus.READY, artifact__isnull=False)
    for version in pending.filter(kind=VersionKind.BASE).select_related("artifact", "model"):
        try:
            found = stored_architecture(version)
        except (InspectionError, ValueError, OSError) as exc:
            log(f"{version.label}: not read ({exc})")
            continue
        if found is None:
            continue
        facts, shape = found
        _save(actor, version, facts["family"], facts, shape or version.shape)
        log(f"{version.label}: {facts['family']}")
        done += 1
    for adapter in pending.filter(kind=VersionKind.ADAPTER).exclude(base_version__family=""):
        base = adapter.base_version
        _save(actor, adapter, base.family, base.architecture_facts, adapter.shape)
        done += 1
    return done + read_missing_lora_layers(actor, log)


def read_missing_lora_layers(actor: Actor, log=logger.info) -> int:
    """Give every ready base version read before imports stored the layers LoRA may adapt those layers,
    where torch is installed; the number of versions given."""
    done = 0
    pending = (
        ModelVersion.objects.filter(kind=VersionKind.BASE, status=VersionStatus.READY, artifact__isnull=False)
        .exclude(family="")
        .exclude(architecture_facts__has_key=LORA_LAYERS)
    )
    for version in pending.select_related("artifact", "model"):
        try:
            config = stored_config(version)
        except (ValueError, OSError) as exc:
            log(f"{version.label}: layers not read ({exc})")
            continue
        if config is None:
            continue  # a GGUF file: its layers are read by nothing before a run
        layers = stored_lora_layers(config)
        if layers is None:
            log(
                "layers LoRA may adapt not read: torch is not installed here (run `portfolio manage "
                "read_architectures` where the train extra is, the worker's image)"
            )
            break
        _save_layers(actor, version, layers)
        log(f"{version.label}: layers LoRA may adapt {'read' if layers else 'unknown to transformers'}")
        done += 1
    return done


@transaction.atomic
def _save(actor: Actor, version: ModelVersion, family: str, facts: dict, shape: dict) -> None:
    # Only a version still without a family: a concurrent import or run has already done it otherwise.
    updated = ModelVersion.objects.filter(pk=version.pk, family="").update(
        family=family, architecture_facts=facts, shape=shape
    )
    if updated:
        audit.record(actor, "model_version.architecture", version, after={"family": family})


@transaction.atomic
def _save_layers(actor: Actor, version: ModelVersion, layers: dict) -> None:
    # Only a version still without them: a concurrent run has already given them otherwise.
    version = (
        ModelVersion.objects.select_for_update(of=("self",))
        .exclude(architecture_facts__has_key=LORA_LAYERS)
        .filter(pk=version.pk)
        .first()
    )
    if version is not None:
        version.architecture_facts = {**version.architecture_facts, LORA_LAYERS: layers}
        version.save(update_fields=["architecture_facts"])
        audit.record(actor, "model_version.architecture", version, after={LORA_LAYERS: bool(layers)})
