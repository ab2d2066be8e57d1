"""A rollout's one decision, pure: from the baseline's and the canary's figures since the canary started,
its policy and the time, whether to promote the canary, hold (watch on), or roll it back, and why.

- Past a threshold (error rate above the baseline's by more than allowed, or p95 latency above the
  baseline's by more than the allowed ratio): roll back, with the figures in the reason. Before the window
  ends this needs ``min_requests`` canary requests (a first unlucky call decides nothing); once it has ended,
  whatever the canary answered counts.
- Window not over: hold.
- Window over: promote when healthy; roll back when the canary answered nothing at all (giving all traffic
  to a target that took none, a deployment with no ready replica say, would turn the endpoint off).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"


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
class Policy:
    ends_at: datetime  # the watch window's end
    min_requests: int = 20  # canary requests needed to roll back before the window ends
    max_error_rate_increase: float = 0.02  # 0.02: two percentage points above the baseline's error rate
    max_latency_ratio: float = 1.5  # canary p95 / baseline p95


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
    if baseline.requests and baseline.p95_ms > 0:
        ratio = canary.p95_ms / baseline.p95_ms
        if ratio > policy.max_latency_ratio + 1e-9:
            return (
                f"p95 latency {canary.p95_ms:.0f} ms on the canary against {baseline.p95_ms:.0f} ms on the "
                f"baseline: {ratio:.2f}x, more than the {policy.max_latency_ratio:g}x allowed"
            )
    return None


def decide(baseline: Stats, canary: Stats, policy: Policy, now: datetime) -> tuple[str, str]:
    """``(promote | hold | rollback, reason)``."""
    window_over = now >= policy.ends_at
    enough = canary.requests >= policy.min_requests
    if enough or window_over:
        why = breach(baseline, canary, policy)
        if why is not None:
            return ROLLBACK, f"Rolled back: {why}."
    if not window_over:
        if not enough:
            return HOLD, (
                f"Watching: {canary.requests} of the {policy.min_requests} canary requests needed so far; "
                "the window is not over."
            )
        return (
            HOLD,
            f"Watching: healthy so far over {canary.requests} canary requests; the window is not over.",
        )
    if not canary.requests:
        return ROLLBACK, (
            "Rolled back: the canary answered no request in the watch window (is its deployment ready?)."
        )
    return PROMOTE, (
        f"Promoted: the window is over and the canary is healthy over {canary.requests} requests "
        f"(error rate {_percent(canary.error_rate)} against {_percent(baseline.error_rate)}, p95 "
        f"{canary.p95_ms:.0f} ms against {baseline.p95_ms:.0f} ms)."
    )
