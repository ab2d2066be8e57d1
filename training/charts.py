"""The dataset pages' charts, laid out on the server for inline SVG (no script, no inline style: CSP).

``length_histogram`` turns a version's stored histogram into bars, y-axis ticks and x-axis labels, in
the SVG's own units (``WIDTH`` x ``HEIGHT``); the SVG scales to its card. Bins past the context length
are drawn in the warning tone and a dashed line marks the limit.
"""

from __future__ import annotations

import math

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 30
TICKS = 4
MAX_X_LABELS = 6


def _c(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _tick_step(largest: int) -> int:
    """A round whole-number step (1, 2, 5 x 10^k) so that ``TICKS`` steps reach ``largest``."""
    raw = max(1, math.ceil(largest / TICKS))
    power = 10 ** (len(str(raw)) - 1)
    for step in (1, 2, 5, 10):
        if raw <= step * power:
            return step * power
    return 10 * power  # pragma: no cover


def short_number(value: float) -> str:
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}".removesuffix(".0") + suffix
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def length_histogram(lengths: dict) -> dict | None:
    """The chart for ``stats["lengths"]`` of a version, or None when there is nothing to draw."""
    histogram = lengths.get("histogram") or {}
    counts, edges = histogram.get("counts") or [], histogram.get("edges") or []
    if not counts:
        return None
    unit = lengths.get("unit", "tokens")
    context = lengths.get("context_length") if unit == "tokens" else None
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = _tick_step(max(counts))
    top = step * TICKS
    slot = plot_width / len(counts)
    gap = min(2.0, slot * 0.15)
    bars = []
    for i, count in enumerate(counts):
        height = plot_height * count / top
        low, high = edges[i], edges[i + 1] - 1
        bars.append(
            {
                "x": _c(LEFT + slot * i + gap / 2),
                "y": _c(TOP + plot_height - height),
                "width": _c(max(slot - gap, 0.5)),
                "height": _c(height),
                "over": bool(context and high > context),
                "title": f"{low:,}–{high:,} {unit}: {count:,} row{'s' if count != 1 else ''}",
            }
        )
    ticks = [
        {"y": _c(TOP + plot_height - plot_height * i / TICKS), "label": short_number(step * i)}
        for i in range(TICKS + 1)
    ]
    every = max(1, math.ceil(len(counts) / MAX_X_LABELS))
    x_labels = [
        {"x": _c(LEFT + slot * i), "label": short_number(edges[i])} for i in range(0, len(edges), every)
    ]
    marker = None
    span = edges[-1] - edges[0]
    if context and span and context < edges[-1]:
        marker = {
            "x": _c(LEFT + plot_width * (context - edges[0]) / span),
            "label": f"context {short_number(context)}",
        }
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "base": TOP + plot_height,
        "label_y": HEIGHT - 10,
        "bars": bars,
        "ticks": ticks,
        "x_labels": x_labels,
        "marker": marker,
        "unit": unit,
        "summary": (
            f"Row lengths in {unit}: {sum(counts):,} rows from {lengths.get('min', 0):,} to "
            f"{lengths.get('max', 0):,}, median {lengths.get('p50', 0):,}, 95th percentile {lengths.get('p95', 0):,}."
        ),
    }


def label_bars(labels: list[dict]) -> list[dict]:
    """Each label's share of the rows, for the distribution bars (widths in percent of the largest)."""
    total = sum(item["count"] for item in labels) or 1
    largest = max((item["count"] for item in labels), default=1) or 1
    return [
        {
            **item,
            "share": round(100 * item["count"] / total, 1),
            "width": _c(100 * item["count"] / largest),
        }
        for item in labels
    ]
