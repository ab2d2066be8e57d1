"""How figures and links read on the serving pages: percentages, bars, links, rates, engine arguments."""

from __future__ import annotations

from decimal import Decimal

from django.urls import NoReverseMatch, reverse


def percent(used: float, total: float) -> int:
    if total <= 0:
        return 0
    return max(0, min(100, round(100 * used / total)))


def fill(used: float, total: float) -> dict:
    """How full a bar is, coloured from 70 % and 90 % (capacity, budgets)."""
    filled = percent(used, total)
    return {"percent": filled, "level": "high" if filled >= 90 else "mid" if filled >= 70 else "low"}


def bar(label: str, used_text: str, used: int, total: int) -> dict:
    """A capacity bar: how full, coloured from 70 % and 90 %."""
    return {"label": label, "text": used_text, **fill(used, total)}


def url_or_blank(url_name: str, **kwargs) -> str:
    """A page's address, or "" where that page is not installed (the registry's, say)."""
    try:
        return reverse(url_name, kwargs=kwargs or None)
    except NoReverseMatch:
        return ""


def version_url(version) -> str:
    return url_or_blank("version-detail", name=version.model.name, number=version.number)


def rate(value: Decimal) -> str:
    """A price as written: 1.2500 -> "1.25", 0.0000 -> "0"."""
    return f"{value.normalize():f}"


def arg_value(value) -> str:
    """An engine argument's value as the deployment page lists it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value in ("", None) else str(value)
