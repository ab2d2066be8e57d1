"""How numbers, sizes and spans of time read on every page: ``{% load formatting %}``, then
``{{ version.parameter_count|human_count }}``, ``{{ tokens|short_number }}``, ``{{ bytes|gib }}``,
``{{ seconds|duration_label }}``, ``{{ seconds|age_label }}``, ``{{ seconds|audio_seconds }}``.

The filters are plain functions too: views, forms and error messages that must write a figure in a
sentence import them from here, so that a figure reads the same wherever it is shown.
"""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()

GIB = 1024**3


@register.filter
def human_count(n: int | None) -> str:
    """134515008 -> "134.5M": parameter counts as people quote them; "—" for none."""
    if not n:
        return "—"
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= factor * 0.9995:  # 999,960 is "1.0M", not "1000.0K"
            return f"{n / factor:.1f}{suffix}"
    return str(n)


@register.filter
def audio_seconds(seconds: Decimal | int | None) -> str:
    """Decimal("7.5") -> "7.5 s", 3600 -> "3,600.0 s": audio sent to speech models, which are billed by the
    second (their calls have no tokens)."""
    return f"{Decimal(seconds or 0):,.1f} s"


@register.filter
def short_number(value: float) -> str:
    """1234 -> "1.2k", 5_600_000 -> "5.6M", 12 -> "12", 0.5 -> "0.5": chart ticks and usage at a glance."""
    value = float(value or 0)
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            text = f"{value / factor:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}"


@register.filter
def gib(n: int) -> str:
    """Bytes in GiB with one decimal, without the unit: 1610612736 -> "1.5"."""
    return f"{(n or 0) / GIB:.1f}"


@register.filter
def duration_label(seconds: float | None) -> str:
    """A span as people read it: "45 s", "3 min 12 s", "2 h 5 min"; "" for none."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


@register.filter
def age_label(seconds: float | None) -> str:
    """How long ago, as people read it at a glance: "4 s ago", "3 min ago", "2 h ago", "5 d ago"."""
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@register.filter
def compute_hours(seconds: float) -> str:
    """Compute hours with enough digits to show a short job: "0.012", "1.50"."""
    value = seconds / 3600
    return f"{value:.3f}" if 0 < value < 0.1 else f"{value:,.2f}"


@register.filter
def index_ranges(ids) -> str:
    """Numbers as runs: ``[0, 1, 2, 3, 6]`` -> ``0-3,6`` (cores of a replica, layers of a model)."""
    parts: list[str] = []
    ordered = sorted(ids or ())
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
