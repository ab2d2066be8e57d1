"""The leaderboard of an eval set: each candidate endpoint's latest finished run on it, best quality first,
with the front marked (candidates no other beats on both quality and cost per 1,000 requests). A run
scored under other settings than the reference run (the task's production endpoint's, else the one over
the most rows: ``comparability``), or of an endpoint repointed since, is listed, marked not comparable with
why, and is on no front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from portfolio.charts import coordinate, nice_step, tick_label
from training.choices import JobStatus
from training.evals import comparability, metrics
from training.evals.models import EndpointEvalRun, EvalSet


@dataclass
class Entry:
    run: EndpointEvalRun
    quality: float | None
    latency_p50_ms: float | None
    cost_per_1k: float | None
    judge_score: float | None = None
    on_front: bool = False
    # Why the run is not ranked beside the reference run ("" when it is).
    incomparable: str = ""

    @property
    def endpoint(self) -> str:
        return self.run.endpoint_name

    @property
    def rows(self) -> int:
        """The rows the run scored."""
        return self.run.rows_total

    @property
    def comparable(self) -> bool:
        return not self.incomparable

    @property
    def cells(self) -> dict[str, str]:
        return figures(self.run.metrics)


def share(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def figures(scores: dict) -> dict[str, str]:
    """A run's headline figures as the pages show them ("—" where there is none)."""
    cost = scores.get("cost_per_1k_requests")
    rate = scores.get("tokens_per_second")
    return {
        "quality": share(scores.get("quality")),
        "accuracy": share(scores.get("accuracy")),
        "macro_f1": "—" if scores.get("macro_f1") is None else f"{scores['macro_f1']:.3f}",
        "exact_match": share(scores.get("exact_match")),
        "contains": share(scores.get("contains")),
        "p50": "—" if scores.get("latency_p50_ms") is None else f"{scores['latency_p50_ms']:.0f} ms",
        "p95": "—" if scores.get("latency_p95_ms") is None else f"{scores['latency_p95_ms']:.0f} ms",
        "rate": "—" if rate is None else f"{rate:.1f}",
        "cost": "not priced" if cost is None else f"{cost:.4f}",
        "judge": "—" if scores.get("judge_score") is None else f"{scores['judge_score']:.2f}",
    }


def leaderboard(eval_set: EvalSet) -> list[Entry]:
    return leaderboards([eval_set])[eval_set.pk]


def leaderboards(eval_sets: Sequence[EvalSet]) -> dict[int, list[Entry]]:
    """Each eval set's leaderboard by its id, in at most three queries however many eval sets (a task's page
    and its API answer show them all)."""
    if not eval_sets:
        return {}
    # The latest finished run of each endpoint on each eval set (PostgreSQL's DISTINCT ON: one row each,
    # however many runs a CI pipeline has piled up), without the rows' answers (megabytes).
    latest = (
        EndpointEvalRun.objects.filter(eval_set__in=[e.pk for e in eval_sets], status=JobStatus.SUCCEEDED)
        .defer("answers")
        .order_by("eval_set_id", "endpoint_name", "-created_at", "-id")
        .distinct("eval_set_id", "endpoint_name")
    )
    by_set: dict[int, list[EndpointEvalRun]] = {e.pk: [] for e in eval_sets}
    for run in latest:
        by_set[run.eval_set_id].append(run)
    # Whether a run's endpoint was repointed depends on the run alone: asked once for all of them.
    repointed = comparability.repointed_runs(run for found in by_set.values() for run in found)
    return {e.pk: _ranked(e, by_set[e.pk], repointed) for e in eval_sets}


def _ranked(eval_set: EvalSet, latest: list[EndpointEvalRun], repointed: set[int]) -> list[Entry]:
    """One eval set's latest runs (by endpoint name) as its leaderboard, best first, the front marked."""
    entries = [
        Entry(
            run=run,
            quality=run.metrics.get("quality"),
            latency_p50_ms=run.metrics.get("latency_p50_ms"),
            cost_per_1k=run.metrics.get("cost_per_1k_requests"),
            judge_score=run.metrics.get("judge_score"),
        )
        for run in latest
    ]
    reference = comparability.reference_run([e.run for e in entries], eval_set.task.production_endpoint_id)
    if reference is not None:
        for entry in entries:
            entry.incomparable = comparability.incomparable(entry.run, reference, eval_set.row_count)
    for entry in entries:
        if entry.run.pk in repointed:
            entry.incomparable = (
                "measured before its endpoint was repointed or reconfigured: evaluate it again"
            )
    best = metrics.front([(e.endpoint, e.quality, e.cost_per_1k) for e in entries if e.comparable])
    for entry in entries:
        entry.on_front = entry.endpoint in best
    return sorted(
        entries,
        key=lambda e: (
            not e.comparable,
            e.quality is None,
            -(e.quality or 0),
            # An unpriced run is not known to be the cheapest: after the priced ones at its quality.
            e.cost_per_1k is None,
            e.cost_per_1k or 0,
            e.endpoint,
        ),
    )


# --- Quality against cost: the leaderboard's chart ------------------------------------------------------
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 20, 14, 38
COST_TICKS = 4


def quality_cost_chart(entries: list[Entry], currency: str) -> dict | None:
    """The candidates with a quality and a cost as points (quality 0-100% up, cost per 1,000 requests
    right), the front's points marked and joined from the cheapest; None with fewer than one such point.
    Laid out for ``training/includes/quality_cost_chart.html`` (inline SVG, no script)."""
    drawn = [e for e in entries if e.comparable and e.quality is not None and e.cost_per_1k is not None]
    if not drawn:
        return None
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = nice_step(max(e.cost_per_1k or 0 for e in drawn) / COST_TICKS)
    right = step * COST_TICKS

    def x(cost: float) -> float:
        return LEFT + plot_width * cost / right

    def y(quality: float) -> float:
        return TOP + plot_height * (1 - min(max(quality, 0.0), 1.0))

    points = [
        {
            "x": coordinate(x(e.cost_per_1k or 0)),
            "y": coordinate(y(e.quality or 0)),
            "front": e.on_front,
            "label": e.endpoint,
            "label_y": coordinate(y(e.quality or 0) - 7),
            "title": f"{e.endpoint}: {share(e.quality)} at {e.cost_per_1k:.4f} {currency} per 1,000 requests",
        }
        for e in sorted(drawn, key=lambda e: (e.cost_per_1k, -(e.quality or 0), e.endpoint))
    ]
    front = sorted((e for e in drawn if e.on_front), key=lambda e: (e.cost_per_1k, e.quality))
    line = " ".join(f"{coordinate(x(e.cost_per_1k or 0))},{coordinate(y(e.quality or 0))}" for e in front)
    unpriced = sum(1 for e in entries if e.comparable and e.cost_per_1k is None)
    apart = sum(1 for e in entries if not e.comparable)
    summary = f"{len(drawn)} candidate{'s' if len(drawn) != 1 else ''} by quality and cost per 1,000 requests"
    if front:
        summary += "; on the front: " + ", ".join(
            f"{e.endpoint} ({share(e.quality)} at {e.cost_per_1k:.4f})" for e in front
        )
    if unpriced:
        summary += f"; {unpriced} not priced, not drawn"
    if apart:
        summary += f"; {apart} not comparable (other rows or max_tokens), not drawn"
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": HEIGHT - BOTTOM,
        "axis_x": LEFT - 6,
        "label_y": HEIGHT - BOTTOM + 16,
        "title_y": HEIGHT - 4,
        "middle_x": coordinate(LEFT + plot_width / 2),
        "y_ticks": [{"y": coordinate(y(q / 4)), "label": f"{25 * q}%"} for q in range(5)],
        "x_ticks": [
            {"x": coordinate(x(step * i)), "label": tick_label(step * i, step)} for i in range(COST_TICKS + 1)
        ],
        "points": points,
        "front_line": line if len(front) > 1 else "",
        "currency": currency,
        "summary": summary + ".",
    }
