"""Reading the architecture of versions imported before imports read it, from their stored files.

Only ``config.json`` and the first bytes of each safetensors file (its header) are read from the artifact
store, never the weights: on an S3 store that is a few KB per version, not gigabytes. Adapters take their
base's facts, as imports give them.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing

from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.registry import families, jsonfiles
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.inspection import SHAPE_KEYS, InspectionError, read_safetensors_header
from portfolio.registry.models import ModelVersion
from portfolio.registry.stores import default_store

logger = logging.getLogger(__name__)


def stored_architecture(version: ModelVersion) -> tuple[dict, dict] | None:
    """``(architecture facts, shape)`` of a base version from its stored files; None without a config."""
    store = default_store()
    files = {f["path"]: f for f in (version.artifact.files if version.artifact else [])}
    entry = files.get("config.json")
    if entry is None or entry["size"] > jsonfiles.MAX_JSON_BYTES:
        return None
    with closing(store.open_blob(entry["sha256"])) as handle:
        config = json.loads(handle.read(jsonfiles.MAX_JSON_BYTES + 1))
    if not isinstance(config, dict):
        return None
    tensors: dict[str, list[int]] = {}
    for path, weights in files.items():
        if path.endswith(".safetensors"):
            with closing(store.open_blob(weights["sha256"])) as handle:
                header = read_safetensors_header(handle, path)
            tensors |= {k: list(v.get("shape") or []) for k, v in header.items() if k != "__metadata__"}
    text = families.text_config(config)
    shape = {key: text[key] for key in SHAPE_KEYS if key in text}
    return families.read(config, tensors, version.parameter_count), shape


def read_missing_architectures(log=logger.info) -> int:
    """Give every ready version without a family its facts from its files; the number of versions given."""
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
    return done


@transaction.atomic
def _save(actor: Actor, version: ModelVersion, family: str, facts: dict, shape: dict) -> None:
    # Only a version still without a family: a concurrent import or run has already done it otherwise.
    updated = ModelVersion.objects.filter(pk=version.pk, family="").update(
        family=family, architecture_facts=facts, shape=shape
    )
    if updated:
        audit.record(actor, "model_version.architecture", version, after={"family": family})
