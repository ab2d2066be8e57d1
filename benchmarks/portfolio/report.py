"""The pure part of the portfolio benchmark: candidates' figures side by side, their ratios against the
reference (the larger general model), the few-shot prompt, and the text summary. No Django, no processes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

REFERENCE = "gemma-3-270m few-shot"


@dataclass(frozen=True)
class Candidate:
    """One way to answer the task, as the platform measured it on the held-out rows."""

    name: str
    endpoint: str
    accuracy: float | None
    latency_p50_ms: float | None
    cost_per_1k_requests: float | None
    rows: int
    how: str  # what was called: chat completions, few-shot completions, ...
    note: str = ""


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, rounded; None when either is unknown or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return round(value / reference, 3)


def ratios(candidates: list[Candidate], reference: str = REFERENCE) -> dict[str, dict[str, float | None]]:
    """Each candidate's accuracy, p50 latency and cost per 1,000 requests as multiples of the reference's
    (accuracy 2.0: twice as accurate; latency and cost 0.5: half). Empty without the reference."""
    ref = next((c for c in candidates if c.name == reference), None)
    if ref is None:
        return {}
    return {
        c.name: {
            "accuracy": ratio(c.accuracy, ref.accuracy),
            "latency_p50": ratio(c.latency_p50_ms, ref.latency_p50_ms),
            "cost_per_1k_requests": ratio(c.cost_per_1k_requests, ref.cost_per_1k_requests),
        }
        for c in candidates
        if c.name != reference
    }


def few_shot_prompt(shots: list[tuple[str, str]], ticket: str, instruction: str) -> str:
    """A plain-text prompt for a base model without a chat template: the instruction, worked examples, then
    the ticket with its answer left open (the model completes the queue name; a newline ends it)."""
    lines = [instruction.strip(), ""]
    for text, label in shots:
        lines += [f"Ticket: {one_line(text)}", f"Queue: {label}", ""]
    lines += [f"Ticket: {one_line(ticket)}", "Queue:"]
    return "\n".join(lines)


def one_line(text: str) -> str:
    return " ".join(text.split())


def pick_shots(rows: list[tuple[str, str]], per_label: int) -> list[tuple[str, str]]:
    """The first ``per_label`` (text, label) rows of each label, interleaved label by label so that no label
    comes last only because of the file's order."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for text, label in rows:
        if len(by_label.setdefault(label, [])) < per_label:
            by_label[label].append((text, label))
    shots = []
    for i in range(per_label):
        shots += [examples[i] for examples in by_label.values() if i < len(examples)]
    return shots


def result(candidates: list[Candidate], *, context: dict[str, Any], cascade: dict[str, Any]) -> dict:
    """The JSON written to benchmarks/results/portfolio.json."""
    return {
        **context,
        "candidates": [asdict(c) for c in candidates],
        "ratios_vs": REFERENCE,
        "ratios": ratios(candidates),
        "cascade": cascade,
    }


def table(candidates: list[Candidate]) -> str:
    """The side-by-side table the run prints (and the README shows)."""

    def fmt(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    head = f"{'candidate':<28} {'accuracy':>9} {'p50 ms':>8} {'$/1k req':>9}"
    lines = [head, "-" * len(head)]
    for c in candidates:
        lines.append(
            f"{c.name:<28} {fmt(c.accuracy, '.1%'):>9} {fmt(c.latency_p50_ms, '.0f'):>8} "
            f"{fmt(c.cost_per_1k_requests, '.4f'):>9}"
        )
    return "\n".join(lines)
