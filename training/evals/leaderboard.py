"""The leaderboard of an eval set: each candidate endpoint's latest finished run on it, best quality first,
with the front marked (candidates no other beats on both quality and cost per 1,000 requests)."""

from __future__ import annotations

from dataclasses import dataclass

from training.choices import JobStatus
from training.evals import metrics
from training.evals.models import EndpointEvalRun, EvalSet


@dataclass
class Entry:
    run: EndpointEvalRun
    quality: float | None
    latency_p50_ms: float | None
    cost_per_1k: float | None
    on_front: bool = False

    @property
    def endpoint(self) -> str:
        return self.run.endpoint_name

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
    }


def leaderboard(eval_set: EvalSet) -> list[Entry]:
    latest: dict[str, EndpointEvalRun] = {}
    succeeded = EndpointEvalRun.objects.filter(eval_set=eval_set, status=JobStatus.SUCCEEDED)
    for run in succeeded.order_by("created_at", "id"):
        latest[run.endpoint_name] = run  # later runs replace earlier ones
    entries = [
        Entry(
            run=run,
            quality=run.metrics.get("quality"),
            latency_p50_ms=run.metrics.get("latency_p50_ms"),
            cost_per_1k=run.metrics.get("cost_per_1k_requests"),
        )
        for run in latest.values()
    ]
    best = metrics.front([(e.endpoint, e.quality, e.cost_per_1k) for e in entries])
    for entry in entries:
        entry.on_front = entry.endpoint in best
    return sorted(
        entries, key=lambda e: (e.quality is None, -(e.quality or 0), e.cost_per_1k or 0, e.endpoint)
    )
