"""A rollout's one decision, pure: from the baseline's and the canary's figures since the canary started,
its policy and the time, whether to promote the canary, hold (watch on), or roll it back, and why.

- Past a threshold (error rate above the baseline's by more than allowed, or above ``MAX_ERROR_RATE``
  whatever the baseline's, or p95 latency above the baseline's by more than the allowed ratio): roll back,
  with the figures in the reason. Before the window ends this needs ``min_requests`` canary requests (a
  first unlucky call decides nothing); once it has ended, whatever the canary answered counts. A canary
  failing most calls is never promoted, even beside a baseline failing as many: neither is healthy.
- Window not over: hold.
- Window over: promote when healthy over at least ``min_requests`` canary requests; roll back when it
  answered fewer (one healthy call is no evidence; none at all, a deployment with no ready replica say,
  and all traffic given to it would turn the endpoint off).
- No baseline traffic (its routes had no ready replica, say): the canary's latency has nothing to be
  compared with, so it holds until the window ends and is then decided on the absolute checks alone,
  one of which is a p95 under ``MAX_UNCOMPARED_P95_MS``: a canary that slow is rolled back, not promoted
  on a comparison never made.
- With a judge (optional): a sample of the canary's answers is scored by a judge endpoint (0-1). Once
  ``min_judge_samples`` are scored, a mean under ``min_judge_score`` rolls back, window over or not; at the
  window's end, fewer scored samples than that is too little evidence to promote on: roll back, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"
MAX_ERROR_RATE = 0.5  # a canary failing more than half its calls is broken, whatever the baseline does
MAX_UNCOMPARED_P95_MS = 60_000.0  # with no baseline latency to compare: a minute at p95 is broken, not slow


@dataclass(frozen=True)
class Stats:
    """One side's requests since the canary started: how many, how many failed, their p95 latency."""

    requests: int = 0
    errors: int = 0
    p95_ms: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "error_percent": f"{100 * self.error_rate:.1f}",
            "p95_ms": round(self.p95_ms, 1),
        }


@dataclass(frozen=True)
class Judged:
    """The judge's scores (0-1) of the canary answers sampled so far: how many it scored, their sum, and how
    many replies it gave that said no readable score (not counted in the mean)."""

    samples: int = 0
    total: float = 0.0
    unreadable: int = 0

    @property
    def score(self) -> float | None:
        return self.total / self.samples if self.samples else None

    def plus(self, scores: list[float | None]) -> Judged:
        read = [s for s in scores if s is not None]
        return Judged(
            self.samples + len(read), self.total + sum(read), self.unreadable + len(scores) - len(read)
        )

    def as_dict(self) -> dict:
        score = self.score
        return {
            "samples": self.samples,
            "total": self.total,
            "unreadable": self.unreadable,
            "score": None if score is None else round(score, 4),
        }

    @classmethod
    def of(cls, data: dict) -> Judged:
        return cls(int(data.get("samples", 0)), float(data.get("total", 0.0)), int(data.get("unreadable", 0)))


@dataclass(frozen=True)
class Policy:
    ends_at: datetime  # the watch window's end
    min_requests: int = 20  # canary requests needed to judge it: to roll back early, and to promote
    max_error_rate_increase: float = 0.02  # 0.02: two percentage points above the baseline's error rate
    max_latency_ratio: float = 1.5  # canary p95 / baseline p95
    min_judge_score: float | None = None  # the judge's mean score the canary needs (None: no judge)
    min_judge_samples: int = 5  # scored samples needed before the judge's mean decides anything


def _percent(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def breach(baseline: Stats, canary: Stats, policy: Policy) -> str | None:
    """Why the canary is worse than allowed, with the figures; None when it is not (or cannot be told)."""
    if not canary.requests:
        return None
    increase = canary.error_rate - baseline.error_rate
    if increase > policy.max_error_rate_increase + 1e-9:  # (a rate at the threshold is within it)
        return (
            f"error rate {_percent(canary.error_rate)} ({canary.errors} of {canary.requests} canary requests) "
            f"against {_percent(baseline.error_rate)} on the baseline ({baseline.errors} of "
            f"{baseline.requests}): {_percent(increase)} higher, more than the "
            f"{_percent(policy.max_error_rate_increase)} allowed"
        )
    if canary.error_rate > MAX_ERROR_RATE:
        return (
            f"error rate {_percent(canary.error_rate)} ({canary.errors} of {canary.requests} canary requests), "
            f"over the {_percent(MAX_ERROR_RATE)} no canary may fail, whatever the baseline's "
            f"({_percent(baseline.error_rate)})"
        )
    if _compared(baseline):
        ratio = canary.p95_ms / baseline.p95_ms
        if ratio > policy.max_latency_ratio + 1e-9:
            return (
                f"p95 latency {canary.p95_ms:.0f} ms on the canary against {baseline.p95_ms:.0f} ms on the "
                f"baseline: {ratio:.2f}x, more than the {policy.max_latency_ratio:g}x allowed"
            )
    return None


def _compared(baseline: Stats) -> bool:
    """Whether the baseline answered anything the canary's latency can be compared with."""
    return baseline.requests > 0 and baseline.p95_ms > 0


def judge_breach(judged: Judged, policy: Policy) -> str | None:
    """Why the judge's mean score is too low, with the figures; None when it is not, or not yet known."""
    score = judged.score
    if policy.min_judge_score is None or score is None or judged.samples < policy.min_judge_samples:
        return None
    if score < policy.min_judge_score - 1e-9:  # (a score at the threshold is within it)
        return (
            f"judge score {score:.2f} over {judged.samples} sampled canary answers, under the "
            f"{policy.min_judge_score:.2f} required"
        )
    return None


def _judge_note(judged: Judged, policy: Policy) -> str:
    if policy.min_judge_score is None:
        return ""
    if judged.score is None:
        return f" No sampled canary answer judged yet (of the {policy.min_judge_samples} needed)."
    return f" Judge score {judged.score:.2f} over {judged.samples} sampled answers (of {policy.min_judge_samples} needed)."


def decide(
    baseline: Stats,
    canary: Stats,
    policy: Policy,
    now: datetime,
    judged: Judged | None = None,
    canary_ready: bool = True,
) -> tuple[str, str]:
    """``(promote | hold | rollback, reason)``. ``canary_ready``: whether the canary has a replica ready to
    take calls now (the gateway routes to no other); one without is never promoted."""
    judged = judged or Judged()
    window_over = now >= policy.ends_at
    enough = canary.requests >= policy.min_requests
    if enough or window_over:
        why = breach(baseline, canary, policy)
        if why is not None:
            return ROLLBACK, f"Rolled back: {why}."
    why = judge_breach(judged, policy)
    if why is not None:
        return ROLLBACK, f"Rolled back: {why}."
    note = _judge_note(judged, policy)
    if not window_over:
        if not enough:
            return HOLD, (
                f"Watching: {canary.requests} of the {policy.min_requests} canary requests needed so far; "
                f"the window is not over.{note}"
            )
        return (
            HOLD,
            f"Watching: healthy so far over {canary.requests} canary requests; the window is not over.{note}",
        )
    if not canary.requests:
        return ROLLBACK, (
            "Rolled back: the canary answered no request in the watch window (is its deployment ready?)."
        )
    if not canary_ready:
        return ROLLBACK, (
            "Rolled back: the window is over and the canary has no replica ready to take calls now (its "
            "replicas stopped or failed, or none has loaded its adapter); promoted, it would leave the "
            "endpoint's calls nowhere to go."
        )
    if not enough:
        return ROLLBACK, (
            f"Rolled back: the window is over and the canary answered {canary.requests} of the "
            f"{policy.min_requests} requests needed to promote on (a longer window, a larger canary share or "
            "a lower minimum would give it enough)."
        )
    if policy.min_judge_score is not None and judged.samples < policy.min_judge_samples:
        return ROLLBACK, (
            f"Rolled back: the window is over and the judge scored {judged.samples} sampled canary answers, "
            f"fewer than the {policy.min_judge_samples} needed to promote on."
        )
    if not _compared(baseline) and canary.p95_ms > MAX_UNCOMPARED_P95_MS:
        return ROLLBACK, (
            f"Rolled back: the window is over, the baseline answered no request to compare the canary's latency "
            f"with, and its p95 of {canary.p95_ms:.0f} ms is over the {MAX_UNCOMPARED_P95_MS:.0f} ms a canary "
            "may take uncompared."
        )
    latency = f"{baseline.p95_ms:.0f} ms" if _compared(baseline) else "nothing: no baseline request"
    return PROMOTE, (
        f"Promoted: the window is over and the canary is healthy over {canary.requests} requests "
        f"(error rate {_percent(canary.error_rate)} against {_percent(baseline.error_rate)}, p95 "
        f"{canary.p95_ms:.0f} ms against {latency}).{note}"
    )
