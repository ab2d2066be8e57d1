"""``{% status_badge kind value %}``: a status as a badge coloured by the tone its choices carry
(``portfolio.badges``). ``label`` replaces the words on it, ``title`` is shown on hover."""

from __future__ import annotations

from django import template
from django.utils.html import format_html

from portfolio.badges import badge

register = template.Library()


@register.simple_tag
def status_badge(kind: str, value, *, label=None, title=None) -> str:
    found = badge(kind)
    words = found.label(value) if label is None else label
    if title:
        return format_html(
            '<span class="badge badge--{}" title="{}">{}</span>', found.tone(value), title, words
        )
    return format_html('<span class="badge badge--{}">{}</span>', found.tone(value), words)


@register.filter
def tone(value, kind: str) -> str:
    """``{{ artifact.health|tone:"health" }}``: the tone alone, for a badge with markup of its own."""
    return badge(kind).tone(value)


@register.filter
def badge_label(value, kind: str) -> str:
    """``{{ artifact.health|badge_label:"health" }}``: the words on the badge."""
    return badge(kind).label(value)
