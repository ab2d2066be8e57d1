"""How versions read in the registry's tables: parameter counts, source references, aliases."""

from __future__ import annotations

from portfolio.registry.choices import Source
from portfolio.registry.models import ModelVersion


def human_count(n: int | None) -> str:
    """134515008 -> "134.5M": parameter counts as people quote them."""
    if not n:
        return "—"
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= factor * 0.9995:  # 999,960 is "1.0M", not "1000.0K"
            return f"{n / factor:.1f}{suffix}"
    return str(n)


def short_ref(version: ModelVersion) -> str:
    """The telling end of a source reference: a server path's last part, a hub reference whole."""
    ref = version.source_ref
    if version.source in (Source.LOCAL, Source.GGUF) and "/" in ref.rstrip("/"):
        return "…/" + ref.rstrip("/").rsplit("/", 1)[1]
    return ref if len(ref) <= 40 else ref[:39] + "…"


def decorate(versions, aliases_by_version: dict[int, list[str]] | None = None) -> None:
    """Give each version its table labels: parameters (short and exact), reference, alias names."""
    for version in versions:
        version.params_label = human_count(version.parameter_count)
        version.params_exact = f"{version.parameter_count:,}" if version.parameter_count else "—"
        version.ref_label = short_ref(version)
        version.alias_names = (aliases_by_version or {}).get(version.pk, [])
