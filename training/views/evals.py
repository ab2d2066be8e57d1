"""Eval runs on the pages: the list of runs, and a job's runs side by side with its base's with the change
between them. Both show, beside the scores, the latency and tokens per second measured on a serving replica
when the version was deployed (``training.serving_speed``), and say so when it was not."""

from __future__ import annotations

from django.db.models import Q
from django.views.decorators.http import require_GET

from portfolio import listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.htmx import page_or_fragment
from training.evaluation import OTHER
from training.models import EvalRun, FineTuneJob


def eval_comparison(actor: Actor, job: FineTuneJob) -> dict | None:
    """This job's eval runs side by side, the base first: the headline metrics, F1 per label, and the
    change from the base to the fine-tuned version (green where it improved, red where it got worse)."""
    # The version the job's runs are scored on (``FineTuneJob.training_data``, by id): a distillation's are on
    # its teacher's answers, not on the prompts, so the base's run there is the one to compare with.
    scored_on = job.distilled_dataset_version_id or job.dataset_version_id
    runs = list(
        gate.visible(actor, EvalRun)
        .filter(Q(job=job) | Q(version_id=job.base_version_id, dataset_version_id=scored_on))
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
    measured = any("serving" in run.metrics for run in columns)
    for key, label, unit, higher_better in EVAL_METRICS:
        values = [read_metric(run.metrics, key) for run in columns]
        serving = key.startswith("serving.")
        # The serving rows stay when nothing was measured: "not deployed" is the answer to read there.
        if all(value is None for value in values) and not (serving and measured):
            continue
        rows.append(
            {
                "label": label,
                "values": [
                    serving_cell(run.metrics, value, unit) if serving else _metric(value, unit)
                    for run, value in zip(columns, values, strict=True)
                ],
                **_change(values[0], values[-1], unit, higher_better, compare),
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
        run.serving_note = serving_note(run.metrics)
    return {
        "columns": columns,
        "rows": rows,
        "f1_rows": f1_rows,
        "compare": compare,
        "measured": measured,
        # Where the fine-tuned model's answers went, label by label (the base's answers rarely name one).
        "confusion": confusion_table(last.metrics.get("confusion") or {}) if own else None,
    }


# The catch-all column's key in runs scored before 2026-12-04, when no label could be told from it.
LEGACY_OTHER = "(other)"

# The table is labels x (labels + 1) cells: past this many labels it would not be read, only sent.
CONFUSION_LABELS = 20


def confusion_table(confusion: dict[str, dict[str, int]]) -> dict | None:
    """A classification run's confusion counts as a table: a row per expected label, a column per label
    answered (the expected labels, then ``OTHER`` when some answer named none), right answers and misses
    marked (an empty cell is neither); None past ``CONFUSION_LABELS`` labels (the F1 table lists them)."""
    if not confusion or len(confusion) > CONFUSION_LABELS:
        return None
    labels = sorted(confusion)
    if LEGACY_OTHER not in confusion:  # a run scored before OTHER was capitalised: its catch-all column
        confusion = {
            label: {OTHER if column == LEGACY_OTHER else column: count for column, count in counts.items()}
            for label, counts in confusion.items()
        }
    answered = labels + ([OTHER] if any(OTHER in counts for counts in confusion.values()) else [])
    return {
        "columns": answered,
        "rows": [
            {
                "label": label,
                "cells": [_cell(confusion[label].get(column, 0), column == label) for column in answered],
            }
            for label in labels
        ],
    }


def _cell(count: int, diagonal: bool) -> dict:
    return {"count": count, "tone": ("hit" if diagonal else "miss") if count else ""}


# (metrics key, label, unit, whether higher is better), in the order the comparison lists them.
EVAL_METRICS = (
    ("accuracy", "Accuracy", "share", True),
    ("exact_match", "Exact match", "share", True),
    ("contains", "Contains the answer", "share", True),
    ("perplexity", "Perplexity of the answers", "plain", False),
    ("rows", "Rows scored", "count", None),
    ("serving.latency_p50_ms", "Latency p50 on a serving replica", "ms", False),
    ("serving.tokens_per_second", "Tokens/s on a serving replica", "rate", True),
)


def read_metric(metrics: dict, key: str):
    """A value of an eval run's metrics by its dotted key (``serving.latency_p50_ms``), or None."""
    value = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def serving_cell(metrics: dict, value, unit: str) -> str:
    """A serving figure, or why there is none: not deployed, the replica did not answer, not measured."""
    serving = metrics.get("serving")
    if value is not None:
        return _metric(value, unit)
    if not serving:
        return "—"  # evaluated before serving speed was measured
    if not serving.get("deployed"):
        return "not deployed"
    return "no answer"


def serving_note(metrics: dict) -> str:
    """Where and how a run's serving figures were measured, or why there are none, in one sentence."""
    serving = metrics.get("serving")
    if not serving:
        return ""
    if not serving.get("deployed"):
        return serving.get("note") or "Not deployed when evaluated."
    where = f"replica #{serving.get('replica')} of {serving.get('deployment')}"
    if serving.get("node"):
        where += f" on {serving['node']}"
    if serving.get("error"):
        return f"Measured on {where}: {serving['error']}"
    return (
        f"Measured on {where}: {serving.get('requests')} requests one at a time, "
        f"up to {serving.get('max_tokens')} tokens each."
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
    if unit == "ms":
        return f"{value:,.0f} ms"
    if unit == "rate":
        return f"{value:,.1f}"
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
    elif unit == "ms":
        text, small = f"{delta:+,.0f} ms", abs(delta) < 0.5
    elif unit == "rate":
        text, small = f"{delta:+,.1f}", abs(delta) < 0.05
    else:
        text, small = f"{delta:+,.2f}", abs(delta) < 0.005
    if small:
        return {"change": "±0", "tone": "same"}
    return {"change": text.replace("-", "−"), "tone": "better" if (delta > 0) == higher_better else "worse"}


@require_GET
def eval_list(request):
    """Permission: any signed-in user; ``gate.visible`` lists only the runs of versions they may see. Each
    run with its headline score and its serving figures (or "not deployed"). htmx gets the table (paging)."""
    actor = actor_of(request)
    runs = (
        gate.visible(actor, EvalRun)
        .select_related("version__model", "dataset_version__dataset__owner_team", "job")
        .order_by("-created_at", "-id")
    )
    page = listing.paginate(request, runs)
    page.object_list = list(page.object_list)
    for run in page.object_list:
        run.cells = {
            "headline": _metric(run.headline, "share"),
            "perplexity": _metric(run.metrics.get("perplexity"), "plain"),
            "latency": serving_cell(run.metrics, read_metric(run.metrics, "serving.latency_p50_ms"), "ms"),
            "rate": serving_cell(run.metrics, read_metric(run.metrics, "serving.tokens_per_second"), "rate"),
        }
        run.serving_note = serving_note(run.metrics)
    context = {"page": page, "query": listing.query_without(request, "page")}
    return page_or_fragment(
        request, "training/eval_list.html", "training/partials/eval_results.html", context
    )
