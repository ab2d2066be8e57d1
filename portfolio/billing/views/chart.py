"""The spend-per-day chart of the billing page, laid out for ``includes/chart.html`` (inline SVG, no
script or inline style): bars per day, tokens and compute stacked. Billing sits below the gateway, so it
lays out its own bars with the shared helpers of ``portfolio.charts``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from portfolio.charts import coordinate as _c
from portfolio.charts import nice_step, short_number

WIDTH, HEIGHT = 600, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 14, 26
TICKS = 4
MAX_LABELS = 8
SERIES = (("Tokens", "tokens"), ("Compute and storage", "compute"))


@dataclass
class Day:
    """One bar: the day's priced calls (net of credits for calls to the reader's own endpoints) and its
    compute and storage, each rounded to the cent."""

    day: date
    tokens: Decimal
    compute: Decimal

    @property
    def total(self) -> Decimal:
        return self.tokens + self.compute


def spend_chart(days: list[Day], currency: str) -> dict:
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    largest = float(max((d.total for d in days), default=0))
    step = nice_step(largest / TICKS) if largest > 0 else 1.0
    gaps = max(1, math.ceil(largest / step - 1e-9))
    scale = plot_height / (step * gaps)
    bottom = TOP + plot_height
    ticks = [
        {
            "y": _c(bottom - plot_height * i / gaps),
            "label": short_number(step * i) + (f" {currency}" if i == gaps else ""),
        }
        for i in range(gaps + 1)
    ]
    slot = plot_width / max(len(days), 1)
    width = max(1.0, min(slot * 0.7, 28.0))
    every = max(1, math.ceil(len(days) / MAX_LABELS))
    labelled = {len(days) - 1 - i for i in range(0, len(days), every)}
    bars, labels = [], []
    for i, day in enumerate(days):
        x = LEFT + slot * i + (slot - width) / 2
        base = float(bottom)
        title = (
            f"{day.day:%b} {day.day.day}: tokens {day.tokens}, compute and storage {day.compute} {currency}"
        )
        for _label, tone in SERIES:
            value = float(getattr(day, tone))
            if value <= 0:
                continue
            height = max(value * scale, 0.75)
            base -= height
            bars.append(
                {"x": _c(x), "y": _c(base), "w": _c(width), "h": _c(height), "tone": tone, "title": title}
            )
        if i in labelled:
            labels.append({"x": _c(LEFT + slot * (i + 0.5)), "label": f"{day.day:%b} {day.day.day}"})
    total = sum((d.total for d in days), start=0)
    summary = f"Spend per day of the month so far: {total} {currency} in all"
    if days and largest > 0:
        busiest = max(days, key=lambda d: d.total)
        summary += f"; the most on {busiest.day:%b} {busiest.day.day}, {busiest.total} {currency}"
    return {
        "kind": "bars",
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "axis_x": LEFT - 6,
        "bottom": bottom,
        "label_y": HEIGHT - 8,
        "ticks": ticks,
        "labels": labels,
        "bars": bars,
        "lines": [],
        "legend": [{"label": label, "tone": tone} for label, tone in SERIES],
        "summary": summary + ".",
    }
