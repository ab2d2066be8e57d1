"""What every chart shares. Charts are laid out on the server for inline SVG (no script, no inline style:
CSP): a topic's module (``serving.gateway.charts`` for usage, ``training.charts`` for lengths and loss)
builds a dict of coordinates, ticks, labels and a summary sentence, and ``includes/chart.html`` (or the
topic's own template) draws it. Coordinates are in the SVG's own units; the SVG scales to its card.
"""

from __future__ import annotations

import math

from portfolio.templatetags.formatting import short_number

__all__ = ["coordinate", "nice_step", "short_number", "tick_label", "whole_step"]


def coordinate(value: float) -> str:
    """An SVG coordinate, written the same whatever the locale: 12.5, 40."""
    return f"{value:.1f}".removesuffix(".0")


def nice_step(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``: a round gap between y ticks."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def whole_step(largest: float, ticks: int) -> int:
    """A round whole-number step (1, 2, 5 x 10^k) so that ``ticks`` steps reach ``largest``: counts."""
    return int(nice_step(max(1, math.ceil(largest / ticks))))


def tick_label(value: float, step: float) -> str:
    """A tick of a fine axis written with as many decimals as its step needs: 0.005 -> "0.005", 0.02 -> "0.02"."""
    if step >= 1 or value == 0:
        return short_number(value)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"
