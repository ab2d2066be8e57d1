"""REST for rollouts: start a canary of a candidate route target on an endpoint, list an endpoint's
rollouts (the one under way first), and abort the one under way. Stepping is the beat task's."""

from datetime import datetime
from typing import Any

from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from serving import services
from serving.models import Endpoint
from serving.services.rollouts import (
    CANARY_PERCENT,
    JUDGE_FRACTION,
    MAX_ERROR_RATE_INCREASE,
    MAX_JUDGE_RUBRIC,
    MAX_LATENCY_RATIO,
    MIN_JUDGE_SAMPLES,
    MIN_JUDGE_SCORE,
    MIN_REQUESTS,
    WINDOW_SECONDS,
)

router = Router(tags=["serving"])


class RolloutIn(Schema):
    deployment: str = Field(max_length=63, description="The candidate: a deployment of the endpoint's team")
    adapter: str | None = Field(None, max_length=63, description="One of its adapters, or none (the base)")
    canary_percent: int = Field(
        CANARY_PERCENT[0], ge=CANARY_PERCENT[1], le=CANARY_PERCENT[2], description="Canary's share, %"
    )
    window_seconds: int = Field(
        WINDOW_SECONDS[0], ge=WINDOW_SECONDS[1], le=WINDOW_SECONDS[2], description="The watch window"
    )
    min_requests: int = Field(
        MIN_REQUESTS[0],
        ge=MIN_REQUESTS[1],
        le=MIN_REQUESTS[2],
        description="Canary requests needed to judge it: to roll back before the window ends, and to promote",
    )
    max_error_rate_increase: float = Field(
        MAX_ERROR_RATE_INCREASE[0],
        ge=MAX_ERROR_RATE_INCREASE[1],
        le=MAX_ERROR_RATE_INCREASE[2],
        description="Canary's error rate minus the baseline's, at most (0.02: two points)",
    )
    max_latency_ratio: float = Field(
        MAX_LATENCY_RATIO[0],
        ge=MAX_LATENCY_RATIO[1],
        le=MAX_LATENCY_RATIO[2],
        description="Canary's p95 latency over the baseline's, at most",
    )
    judge: str | None = Field(
        None,
        max_length=63,
        description="A judge endpoint scoring a sample of the canary's answers (optional)",
    )
    judge_rubric: str = Field("", max_length=MAX_JUDGE_RUBRIC, description="What the judge scores them on")
    judge_fraction: float | None = Field(
        None,
        ge=JUDGE_FRACTION[1],
        le=JUDGE_FRACTION[2],
        description=f"Share of canary requests matched by a judged sample (default {JUDGE_FRACTION[0]})",
    )
    min_judge_score: float | None = Field(
        None,
        ge=MIN_JUDGE_SCORE[1],
        le=MIN_JUDGE_SCORE[2],
        description=f"The judge's mean score (0-1) needed (default {MIN_JUDGE_SCORE[0]})",
    )
    min_judge_samples: int | None = Field(
        None,
        ge=MIN_JUDGE_SAMPLES[1],
        le=MIN_JUDGE_SAMPLES[2],
        description=f"Scored samples before the judge decides (default {MIN_JUDGE_SAMPLES[0]})",
    )


class AbortIn(Schema):
    reason: str = Field("", max_length=500)


class RolloutOut(Schema):
    id: int
    endpoint: str = Field(alias="endpoint.name")
    deployment: str
    adapter: str
    state: str
    reason: str
    canary_percent: int
    window_seconds: int
    min_requests: int
    max_error_rate_increase: float
    max_latency_ratio: float
    judge_endpoint_name: str
    judge_rubric: str
    judge_fraction: float
    min_judge_score: float | None
    min_judge_samples: int
    judged: dict[str, Any]
    baseline: list[dict[str, Any]]
    figures: dict[str, Any]
    steps: list[dict[str, Any]]
    started_at: datetime
    ends_at: datetime
    checked_at: datetime | None
    finished_at: datetime | None


@router.post("/endpoints/{endpoint}/rollouts", response={201: RolloutOut})
def start_rollout(request, endpoint: str, payload: RolloutIn):
    """Start a canary of the candidate (``deployment.manage``, as for editing routes); one at a time."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    rollout = services.start_rollout(actor=request.auth, endpoint=target, **payload.dict())
    return Status(201, rollout)


@router.get("/endpoints/{endpoint}/rollouts", response=list[RolloutOut])
@paginate(PageNumberPagination, page_size=50)
def list_rollouts(request, endpoint: str):
    """The endpoint's rollouts, newest first; seen by whoever sees the endpoint."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    return target.rollouts.select_related("endpoint").order_by("-started_at", "-id")


@router.post("/endpoints/{endpoint}/rollouts/abort", response=RolloutOut)
def abort_rollout(request, endpoint: str, payload: AbortIn):
    """Abort the rollout under way: the canary's weight back to 0, the baseline's weights restored (409
    when none is under way)."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    return services.abort_rollout(actor=request.auth, endpoint=target, reason=payload.reason.strip())
