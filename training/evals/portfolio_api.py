"""REST for the portfolio: its rows (one per visible task, paginated, ordered by team and slug), naming a
task's production endpoint, and starting a canary of a candidate on it."""

from __future__ import annotations

from datetime import datetime

from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.errors import NotFound
from serving.api_rollouts import RolloutOut
from serving.models import Endpoint
from training.evals import portfolio
from training.evals.models import Task

router = Router(tags=["evaluation"])


class FiguresOut(Schema):
    endpoint: str
    quality: float | None
    latency_p50_ms: float | None
    cost_per_1k_requests: float | None = Field(alias="cost_per_1k")
    parameters: int | None = Field(description="Parameters of the base model that serves it")
    run_id: int | None = Field(description="The eval run these figures come from")
    repointed: bool = Field(
        description="The endpoint routes elsewhere (or is configured otherwise) than when the run measured it: "
        "the figures are not of what it serves now, and it is compared with nothing until evaluated again"
    )


class HintOut(Schema):
    text: str
    candidate: FiguresOut
    can_start_canary: bool = Field(description="False when the rollout service would refuse (see blocked)")
    blocked: str = Field(description="Why one call cannot start a canary of the candidate; empty when it can")

    @staticmethod
    def resolve_can_start_canary(obj) -> bool:
        return not obj.blocked


class PortfolioRowOut(Schema):
    task_id: int = Field(alias="task.pk")
    task: str = Field(alias="task.name")
    slug: str = Field(alias="task.slug")
    kind: str = Field(alias="task.kind")
    team: str = Field(alias="task.owner_team.slug")
    eval_set_id: int | None = None
    production_endpoint: str | None = None
    production_version: str | None = Field(None, alias="version")
    production: FiguresOut | None = Field(
        None, description="The production endpoint's figures on the eval set"
    )
    requests_per_day: float | None = Field(None, description="Over the last 7 days, from the hourly rollups")
    last_evaluated: datetime | None = None
    hint: HintOut | None = None

    @staticmethod
    def resolve_eval_set_id(obj) -> int | None:
        return obj.eval_set.pk if obj.eval_set else None

    @staticmethod
    def resolve_production_endpoint(obj) -> str | None:
        return obj.endpoint.name if obj.endpoint else None


class ProductionIn(Schema):
    endpoint_id: int | None = Field(description="An endpoint the task's team may call; null: none")


class CanaryIn(Schema):
    candidate: str = Field(min_length=1, max_length=63, description="An evaluated candidate endpoint's name")
    canary_percent: int | None = Field(None, ge=1, le=50, description="Canary's share, % (default 5)")


@router.get("/portfolio", response=list[PortfolioRowOut])
@paginate(PageNumberPagination, page_size=50)
def list_portfolio(request):
    """Permission: any signed-in caller; one row per task they see (their teams', all for org-wide roles)."""
    return portfolio.Rows(portfolio.visible_tasks(request.auth))


@router.put("/portfolio/{task_id}/production", response=PortfolioRowOut)
def set_production(request, task_id: int, payload: ProductionIn):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the endpoint one
    its team may call (else 404). Audited as ``task.set_production``."""
    task = gate.get_visible(request.auth, Task, pk=task_id)
    gate.require(request.auth, "training.run", task)
    endpoint = None
    if payload.endpoint_id is not None:
        endpoint = Endpoint.objects.callable_by(task.owner_team).filter(pk=payload.endpoint_id).first()
        if endpoint is None:
            raise NotFound("Endpoint not found.")
    portfolio.set_production_endpoint(actor=request.auth, task=task, endpoint=endpoint)
    return portfolio.row_for(request.auth, task.pk)


@router.post("/portfolio/{task_id}/canary", response={201: RolloutOut})
def start_canary(request, task_id: int, payload: CanaryIn):
    """Start a canary of an evaluated candidate on the task's production endpoint. Permission: the task
    visible (else 404) and ``deployment.manage`` on the endpoint (else 403); audited by the rollout service
    (``rollout.start``). 400: no production endpoint or not a candidate; 409: a rollout is under way, or the
    endpoint cannot route to it."""
    task = gate.get_visible(request.auth, Task, pk=task_id)
    rollout = portfolio.start_canary(
        actor=request.auth, task=task, candidate=payload.candidate, canary_percent=payload.canary_percent
    )
    return Status(201, rollout)
