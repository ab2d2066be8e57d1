"""How the training pages write spans of time and compute hours."""

from __future__ import annotations


def duration_label(seconds: float | None) -> str:
    """A span as people read it: "45 s", "3 min 12 s", "2 h 5 min"."""
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


def hours(seconds: float) -> str:
    """Compute hours with enough digits to show a short job: "0.012", "1.50"."""
    value = seconds / 3600
    return f"{value:.3f}" if 0 < value < 0.1 else f"{value:,.2f}"
