"""Charts of the usage dashboard, laid out on the server for inline SVG: no script, no inline style (CSP).

A chart is a dict the ``includes/chart.html`` template draws: bars (stacked per day) or lines, the
y-axis ticks, the day labels along the x-axis, a legend, and a one-sentence summary for screen readers.
Coordinates are in the SVG's own units (``WIDTH`` x ``HEIGHT``); the shared helpers are ``portfolio.charts``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from portfolio.charts import coordinate as _c
from portfolio.charts import nice_step, short_number

WIDTH, HEIGHT = 600, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 14, 26
TICKS = 4
MAX_DAY_LABELS = 8


@dataclass(frozen=True)
class Series:
    """One quantity per day; ``tone`` picks its colour (``chart-bar--<tone>``, ``chart-line--<tone>``)."""

    label: str
    values: list[float]
    tone: str


def day_label(day: date) -> str:
    return f"{day:%b} {day.day}"


def _frame(days: list[date], top_value: float, unit: str) -> dict:
    """What every chart shares: the plot area, the y ticks for ``top_value`` and the day labels."""
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    # Round ticks (0, 50, 100, 150): at most TICKS gaps, the top one at or above the largest value.
    step = max(1.0, nice_step(top_value / TICKS))  # whole numbers: tokens, requests, milliseconds
    gaps = max(1, math.ceil(top_value / step - 1e-9))
    top = step * gaps
    ticks = []
    for i in range(gaps + 1):
        ticks.append(
            {
                "y": _c(TOP + plot_height - plot_height * i / gaps),
                "label": short_number(step * i) + (f" {unit}" if unit and i == gaps else ""),
            }
        )
    slot = plot_width / max(len(days), 1)
    every = max(1, math.ceil(len(days) / MAX_DAY_LABELS))
    # The last day is always labelled; the others count back from it so that the spacing stays even.
    labelled = {len(days) - 1 - i for i in range(0, len(days), every)}
    labels = [
        {"x": _c(LEFT + slot * (i + 0.5)), "label": day_label(day)}
        for i, day in enumerate(days)
        if i in labelled
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "axis_x": LEFT - 6,
        "bottom": TOP + plot_height,
        "label_y": HEIGHT - 8,
        "ticks": ticks,
        "labels": labels,
        "slot": slot,
        "scale": plot_height / top,
    }


def bar_chart(days: list[date], series: list[Series], *, unit: str = "") -> dict:
    """Bars per day, the series stacked bottom to top in the order given."""
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    frame = _frame(days, max(totals, default=0), unit)
    slot, scale = frame.pop("slot"), frame.pop("scale")
    bar_width = max(1.0, min(slot * 0.7, 28.0))
    bars = []
    for i, day in enumerate(days):
        x = frame["left"] + slot * i + (slot - bar_width) / 2
        base = frame["bottom"]
        parts = ", ".join(f"{s.label} {short_number(s.values[i])}" for s in series)
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            height = max(value * scale, 0.75)  # a day with a little usage still shows
            base -= height
            bars.append(
                {
                    "x": _c(x),
                    "y": _c(base),
                    "w": _c(bar_width),
                    "h": _c(height),
                    "tone": s.tone,
                    "title": f"{day_label(day)}: {parts}",
                }
            )
    busiest = max(range(len(days)), key=lambda i: totals[i]) if days and max(totals) > 0 else None
    summary = ", ".join(f"{short_number(sum(s.values))} {s.label.lower()}" for s in series)
    if busiest is not None:
        summary += f"; the busiest day {day_label(days[busiest])} with {short_number(totals[busiest])}"
    return frame | {
        "kind": "bars",
        "bars": bars,
        "lines": [],
        "legend": [{"label": s.label, "tone": s.tone} for s in series],
        "summary": f"Per day from {_span(days)}: {summary}.",
    }


def line_chart(
    days: list[date], series: list[Series], *, unit: str = "", gaps: list[bool] | None = None
) -> dict:
    """A line per series with a dot per day; days where ``gaps`` is true (no data) break the line."""
    gaps = gaps or [False] * len(days)
    top_value = max((v for s in series for i, v in enumerate(s.values) if not gaps[i]), default=0)
    frame = _frame(days, top_value, unit)
    slot, scale = frame.pop("slot"), frame.pop("scale")
    lines = []
    for s in series:
        segments: list[list[str]] = [[]]
        dots = []
        for i, day in enumerate(days):
            if gaps[i]:
                if segments[-1]:
                    segments.append([])
                continue
            x = _c(frame["left"] + slot * (i + 0.5))
            y = _c(frame["bottom"] - s.values[i] * scale)
            segments[-1].append(f"{x},{y}")
            dots.append(
                {"x": x, "y": y, "title": f"{day_label(day)}: {s.label} {short_number(s.values[i])} {unit}"}
            )
        lines.append(
            {"tone": s.tone, "segments": [" ".join(points) for points in segments if points], "dots": dots}
        )
    shown = [i for i in range(len(days)) if not gaps[i]]
    if shown:
        parts = [
            f"{s.label} between {short_number(min(s.values[i] for i in shown))} and "
            f"{short_number(max(s.values[i] for i in shown))} {unit}"
            for s in series
        ]
        summary = f"Per day from {_span(days)}: " + "; ".join(parts) + "."
    else:
        summary = f"No calls from {_span(days)}."
    return frame | {
        "kind": "lines",
        "bars": [],
        "lines": lines,
        "legend": [{"label": s.label, "tone": s.tone} for s in series],
        "summary": summary,
    }


def _span(days: list[date]) -> str:
    if not days:
        return "no days"
    return f"{day_label(days[0])} to {day_label(days[-1])}"
