"""Eval runs on the pages: a job's runs side by side with its base's, and the change between them."""

from __future__ import annotations

from django.db.models import Q

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from training.models import EvalRun, FineTuneJob


def eval_comparison(actor: Actor, job: FineTuneJob) -> dict | None:
    """This job's eval runs side by side, the base first: the headline metrics, F1 per label, and the
    change from the base to the fine-tuned version (green where it improved, red where it got worse)."""
    runs = list(
        gate.visible(actor, EvalRun)
        .filter(Q(job=job) | Q(version_id=job.base_version_id, dataset_version_id=job.dataset_version_id))
        .select_related("version__model")
        .order_by("created_at", "id")
    )
    if not any(run.job_id == job.pk for run in runs):
        return None  # not evaluated yet; the base's score from an earlier job alone compares nothing
    base = next((r for r in reversed(runs) if r.version_id == job.base_version_id and r.metrics), None)
    own = [r for r in runs if r.job_id == job.pk and r.version_id != job.base_version_id]
    columns = ([base] if base else []) + own
    first, last = columns[0], columns[-1]
    compare = len(columns) > 1
    rows = []
    for key, label, unit, higher_better in EVAL_METRICS:
        values = [run.metrics.get(key) for run in columns]
        if all(value is None for value in values):
            continue
        rows.append(
            {
                "label": label,
                "values": [_metric(value, unit) for value in values],
                **_change(first.metrics.get(key), last.metrics.get(key), unit, higher_better, compare),
            }
        )
    labels = sorted(
        {name for run in columns for name in (run.metrics.get("f1_by_label") or {})},
        key=lambda name: (-(last.metrics.get("label_counts") or {}).get(name, 0), name),
    )
    f1_rows = [
        {
            "label": name,
            "count": (last.metrics.get("label_counts") or first.metrics.get("label_counts") or {}).get(name),
            "values": [_metric((run.metrics.get("f1_by_label") or {}).get(name), "f1") for run in columns],
            **_change(
                (first.metrics.get("f1_by_label") or {}).get(name),
                (last.metrics.get("f1_by_label") or {}).get(name),
                "f1",
                True,
                compare,
            ),
        }
        for name in labels
    ]
    for run in columns:
        run.role = "Base" if run is base else "Fine-tuned"
    return {"columns": columns, "rows": rows, "f1_rows": f1_rows, "compare": compare}


# (metrics key, label, unit, whether higher is better), in the order the comparison lists them.
EVAL_METRICS = (
    ("accuracy", "Accuracy", "share", True),
    ("exact_match", "Exact match", "share", True),
    ("contains", "Contains the answer", "share", True),
    ("perplexity", "Perplexity of the answers", "plain", False),
    ("rows", "Rows scored", "count", None),
)


def _metric(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "share":
        return f"{100 * value:.1f}%"
    if unit == "f1":
        return f"{value:.2f}"
    if unit == "count":
        return f"{value:,}"
    return f"{value:,.2f}"


def _change(before, after, unit: str, higher_better: bool | None, compare: bool) -> dict:
    """The difference from the base, written with its sign, and its tone: better, worse or the same."""
    if not compare or before is None or after is None or higher_better is None:
        return {"change": "", "tone": ""}
    delta = after - before
    if unit == "share":
        text, small = f"{100 * delta:+.1f} pts", abs(delta) < 0.0005
    elif unit == "f1":
        text, small = f"{delta:+.2f}", abs(delta) < 0.005
    else:
        text, small = f"{delta:+,.2f}", abs(delta) < 0.005
    if small:
        return {"change": "±0", "tone": "same"}
    return {"change": text.replace("-", "−"), "tone": "better" if (delta > 0) == higher_better else "worse"}
