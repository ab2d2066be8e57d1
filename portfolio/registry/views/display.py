"""How versions read in the registry's tables: source references, aliases."""

from __future__ import annotations

from portfolio.registry.choices import Source
from portfolio.registry.models import ModelVersion


def short_ref(version: ModelVersion) -> str:
    """The telling end of a source reference: a server path's last part, a hub reference whole."""
    ref = version.source_ref
    if version.source in (Source.LOCAL, Source.GGUF) and "/" in ref.rstrip("/"):
        return "…/" + ref.rstrip("/").rsplit("/", 1)[1]
    return ref if len(ref) <= 40 else ref[:39] + "…"


def decorate(versions, aliases_by_version: dict[int, list[str]] | None = None) -> None:
    """Give each version its table labels: reference, alias names (parameter counts are ``human_count``)."""
    for version in versions:
        version.ref_label = short_ref(version)
        version.alias_names = (aliases_by_version or {}).get(version.pk, [])
