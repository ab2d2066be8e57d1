"""The training pages' charts, laid out on the server for inline SVG (no script, no inline style: CSP).

``length_histogram`` turns a version's stored histogram into bars, y-axis ticks and x-axis labels, in
the SVG's own units (``WIDTH`` x ``HEIGHT``); the SVG scales to its card. Bins past the context length
are drawn in the warning tone and a dashed line marks the limit.

``loss_chart`` lays out a job's training and eval loss against the step, in the shape of the usage charts
(drawn by ``includes/chart.html``). The helpers they share with every chart are ``portfolio.charts``.
"""

from __future__ import annotations

import math

from portfolio.charts import coordinate as _c
from portfolio.charts import nice_step, short_number, whole_step

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 30
TICKS = 4
MAX_X_LABELS = 6


def length_histogram(lengths: dict) -> dict | None:
    """The chart for ``stats["lengths"]`` of a version, or None when there is nothing to draw."""
    histogram = lengths.get("histogram") or {}
    counts, edges = histogram.get("counts") or [], histogram.get("edges") or []
    if not counts:
        return None
    unit = lengths.get("unit", "tokens")
    context = lengths.get("context_length") if unit == "tokens" else None
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = whole_step(max(counts), TICKS)
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


# --- A job's loss curves ---------------------------------------------------------------------------
# The same shape as serving.gateway.charts' charts, so that includes/chart.html draws it.
LOSS_WIDTH, LOSS_HEIGHT = 640, 240
LOSS_LEFT, LOSS_RIGHT, LOSS_TOP, LOSS_BOTTOM = 48, 14, 14, 28
MAX_STEP_LABELS = 7


def _decimals(step: float) -> int:
    """Enough decimals to tell ticks ``step`` apart: 0.5 -> 1, 0.05 -> 2, 2 -> 0."""
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0


def loss_chart(loss_curve: list, eval_curve: list, *, total_steps: int = 0) -> dict | None:
    """Train loss as a line and eval loss as a line with dots, against the step; the x-axis runs to the
    job's total steps, so a running job's curve grows towards the right. None when there is no point yet."""
    train = [(float(step), float(value)) for step, value in loss_curve or [] if value is not None]
    held_out = [(float(step), float(value)) for step, value in eval_curve or [] if value is not None]
    if not train and not held_out:
        return None
    plot_width, plot_height = LOSS_WIDTH - LOSS_LEFT - LOSS_RIGHT, LOSS_HEIGHT - LOSS_TOP - LOSS_BOTTOM
    last_step = max(step for step, _ in train + held_out)
    x_top = max(float(total_steps), last_step, 1.0)
    largest = max(value for _, value in train + held_out)
    y_step = nice_step(largest / TICKS) if largest > 0 else 1.0
    gaps = max(1, math.ceil(largest / y_step - 1e-9))
    y_top = y_step * gaps
    digits = _decimals(y_step)
    bottom = LOSS_TOP + plot_height

    def x(step: float) -> str:
        return _c(LOSS_LEFT + plot_width * step / x_top)

    def y(value: float) -> str:
        return _c(bottom - plot_height * min(value, y_top) / y_top)

    ticks = [
        {"y": _c(bottom - plot_height * i / gaps), "label": f"{y_step * i:.{digits}f}" if i else "0"}
        for i in range(gaps + 1)
    ]
    x_step = max(1, int(nice_step(x_top / (MAX_STEP_LABELS - 1))))
    labels = [{"x": x(s), "label": f"{s:,}"} for s in range(0, int(x_top) + 1, x_step)]
    lines, legend = [], []
    if train:
        lines.append(
            {"tone": "train", "segments": [" ".join(f"{x(s)},{y(v)}" for s, v in train)], "dots": []}
        )
        legend.append({"label": "Training loss", "tone": "train"})
    if held_out:
        lines.append(
            {
                "tone": "eval",
                "segments": [" ".join(f"{x(s)},{y(v)}" for s, v in held_out)],
                "dots": [
                    {"x": x(s), "y": y(v), "title": f"Step {int(s):,}: eval loss {v:.4f}"}
                    for s, v in held_out
                ],
            }
        )
        legend.append({"label": "Eval loss (training rows held back for early stopping)", "tone": "eval"})
    parts = []
    if train:
        parts.append(f"training loss from {train[0][1]:.3f} to {train[-1][1]:.3f}")
    if held_out:
        parts.append(f"eval loss from {held_out[0][1]:.3f} to {held_out[-1][1]:.3f}")
    return {
        "kind": "lines",
        "width": LOSS_WIDTH,
        "height": LOSS_HEIGHT,
        "left": LOSS_LEFT,
        "right": LOSS_WIDTH - LOSS_RIGHT,
        "axis_x": LOSS_LEFT - 6,
        "bottom": bottom,
        "label_y": LOSS_HEIGHT - 8,
        "ticks": ticks,
        "labels": labels,
        "bars": [],
        "lines": lines,
        "legend": legend,
        "summary": f"Up to step {int(last_step):,} of {int(x_top):,}: " + "; ".join(parts) + ".",
    }
