"""REST endpoints for tasks, their eval sets and leaderboards, and eval runs of endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from ninja import Query, Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Team
from portfolio.errors import NotFound
from serving.models import Endpoint
from training import dataset_purge
from training.choices import EvalSetSource, TaskKind
from training.evals import catalogue, judging, runs, side_by_side
from training.evals.leaderboard import leaderboard, leaderboards
from training.evals.models import EndpointEvalRun, EvalSet, Task
from training.models import DatasetVersion

router = Router(tags=["evaluation"])


class EvalSetIn(Schema):
    dataset_version_id: int
    source: EvalSetSource = EvalSetSource.EVAL_ROWS


class TaskIn(Schema):
    owner_team_id: int
    name: str = Field(min_length=2, max_length=120)
    slug: str = Field("", max_length=80)
    kind: TaskKind
    description: str = Field("", max_length=5000)
    eval_sets: list[EvalSetIn] = Field(
        [], max_length=20, description="Dataset versions of the team to evaluate on"
    )


class TaskOut(Schema):
    id: int
    owner_team_id: int
    team: str = Field(alias="owner_team.slug")
    name: str
    slug: str
    kind: str
    description: str
    created_at: datetime


class EvalSetOut(Schema):
    id: int
    dataset_version_id: int
    label: str
    source: str
    row_count: int


class LeaderboardEntryOut(Schema):
    endpoint: str
    run_id: int = Field(alias="run.pk")
    quality: float | None
    latency_p50_ms: float | None
    cost_per_1k_requests: float | None = Field(alias="cost_per_1k")
    judge_score: float | None = Field(
        description="Mean score of the run's judge endpoint, 0-1; None without one"
    )
    on_front: bool = Field(description="No other candidate beats it on both quality and cost")
    rows: int = Field(description="Rows the run scored")
    max_tokens: int = Field(alias="run.max_tokens")
    comparable: bool = Field(
        description="Scored on as many rows (or the eval set whole) and with the same max_tokens as the "
        "reference run (the task's production endpoint's, else the one over the most rows); else on no front"
    )
    incomparable: str = Field(description="Why it is not comparable; empty when it is")


class EvalSetDetail(EvalSetOut):
    leaderboard: list[LeaderboardEntryOut] = []

    @staticmethod
    def resolve_leaderboard(obj) -> list:
        # Built for all the task's eval sets at once by ``TaskDetail.resolve_eval_sets``.
        board = getattr(obj, "board", None)
        return leaderboard(obj) if board is None else board


class TaskDetail(TaskOut):
    eval_sets: list[EvalSetDetail] = []

    @staticmethod
    def resolve_eval_sets(obj) -> list:
        eval_sets = list(
            obj.eval_sets.select_related("dataset_version__dataset").order_by("-created_at", "-id")
        )
        boards = leaderboards(eval_sets)
        for eval_set in eval_sets:
            eval_set.board = boards[eval_set.pk]
        return eval_sets


class EvalRunIn(Schema):
    endpoint_id: int
    eval_set_id: int
    row_limit: int = Field(runs.DEFAULT_ROWS, ge=1, le=runs.MAX_ROWS)
    concurrency: int = Field(4, ge=1, le=runs.MAX_CONCURRENCY)
    max_tokens: int = Field(64, ge=1, le=4096)
    judge_endpoint_id: int | None = Field(
        None, description="An endpoint the task's team may call that scores each answer (billed to the team)"
    )
    rubric: str = Field("", max_length=judging.MAX_RUBRIC, description="What the judge scores answers on")


class EvalRunOut(Schema):
    id: int
    owner_team_id: int
    task_id: int = Field(alias="eval_set.task_id")
    eval_set_id: int
    endpoint_id: int | None
    endpoint: str = Field(alias="endpoint_name")
    status: str = Field(description="queued, running, succeeded, failed (see status_detail) or cancelled")
    status_detail: str
    cancel_requested: bool
    rows_done: int
    rows_total: int
    row_limit: int
    concurrency: int
    max_tokens: int
    judge_endpoint: str = Field(alias="judge_endpoint_name")
    rubric: str
    metrics: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _task(request, task_id: int) -> Task:
    return gate.get_visible(request.auth, Task, pk=task_id)


@router.get("/tasks", response=list[TaskOut])
@paginate(PageNumberPagination, page_size=50)
def list_tasks(request, kind: str = "", team_id: int | None = None):
    """Permission: any signed-in caller; only the tasks of their teams (all for org-wide roles)."""
    tasks = gate.visible(request.auth, Task).select_related("owner_team")
    if kind:
        tasks = tasks.filter(kind=kind)
    if team_id is not None:
        tasks = tasks.filter(owner_team_id=team_id)
    return tasks.order_by("owner_team__slug", "slug", "id")


@router.post("/tasks", response={201: TaskDetail})
def create_task(request, payload: TaskIn):
    """Permission: ``training.run`` in the team (a team not visible: 404); each eval set a dataset version
    of that team (else 404 / 400). All or nothing: an eval set refused leaves no task behind."""
    team = gate.get_visible(request.auth, Team, pk=payload.owner_team_id)
    versions = [
        (gate.get_visible(request.auth, DatasetVersion, pk=item.dataset_version_id), item.source)
        for item in payload.eval_sets
    ]
    with transaction.atomic():
        # Each eval set locks its version (``dataset_purge.ready``): taken in one order here, two requests
        # naming the same versions in opposite orders would deadlock (a 500).
        for version in sorted({version.pk: version for version, _ in versions}.values(), key=lambda v: v.pk):
            dataset_purge.ready(version)
        task = catalogue.create_task(
            actor=request.auth,
            owner_team=team,
            name=payload.name,
            slug=payload.slug,
            kind=payload.kind,
            description=payload.description,
        )
        for version, source in versions:
            catalogue.add_eval_set(actor=request.auth, task=task, dataset_version=version, source=source)
    return Status(201, task)


@router.get("/tasks/{task_id}", response=TaskDetail)
def get_task(request, task_id: int):
    """Permission: the task is visible (its team's members, org-wide roles), else 404. With its eval sets
    and each one's leaderboard."""
    return _task(request, task_id)


@router.delete("/tasks/{task_id}/eval-sets/{eval_set_id}", response={204: None})
def delete_eval_set(request, task_id: int, eval_set_id: int):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the eval set one
    of the task's (else 404). Deletes it and its runs (audited); a run of it queued or running: 409. Its
    dataset version may then have its stored files deleted."""
    task = _task(request, task_id)
    gate.require(request.auth, "training.run", task)
    eval_set = EvalSet.objects.filter(task=task, pk=eval_set_id).first()
    if eval_set is None:
        raise NotFound("Eval set not found.")
    catalogue.delete_eval_set(actor=request.auth, eval_set=eval_set)
    return Status(204, None)


@router.post("/tasks/{task_id}/eval-runs", response={202: EvalRunOut})
def start_eval_run(request, task_id: int, payload: EvalRunIn):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the eval set
    one of the task's and the endpoint one its team may call (else 404). Answers 202: poll the run."""
    task = _task(request, task_id)
    gate.require(request.auth, "training.run", task)
    eval_set = EvalSet.objects.filter(task=task, pk=payload.eval_set_id).first()
    endpoint = Endpoint.objects.callable_by(task.owner_team).filter(pk=payload.endpoint_id).first()
    if eval_set is None:
        raise NotFound("Eval set not found.")
    if endpoint is None:
        raise NotFound("Endpoint not found.")
    judge = None
    if payload.judge_endpoint_id is not None:
        judge = Endpoint.objects.callable_by(task.owner_team).filter(pk=payload.judge_endpoint_id).first()
        if judge is None:
            raise NotFound("Judge endpoint not found.")
    run = runs.start_run(
        actor=request.auth,
        task=task,
        eval_set=eval_set,
        endpoint=endpoint,
        row_limit=payload.row_limit,
        concurrency=payload.concurrency,
        max_tokens=payload.max_tokens,
        judge=judge,
        rubric=payload.rubric,
    )
    return Status(202, run)


class CompareCellOut(Schema):
    answer: str
    correct: bool | None
    judge: float | None


class CompareRowOut(Schema):
    number: int = Field(description="1-based, in the eval set's order")
    prompt: str
    expected: str
    differs: bool
    cells: list[CompareCellOut] = Field(description="One per run, in the order asked")


class CompareRunOut(Schema):
    id: int = Field(alias="pk")
    endpoint: str = Field(alias="endpoint_name")
    metrics: dict[str, Any]


class ComparisonOut(Schema):
    runs: list[CompareRunOut]
    right: list[int] = Field(description="Per run, the compared rows it got right")
    differing: int
    count: int = Field(description="Rows compared: those every run answered")
    rows: list[CompareRowOut] = Field(description="Differing rows first, then in the eval set's order")


class CompareQuery(Schema):
    run: list[int] = Field(..., max_length=side_by_side.MAX_RUNS, description="Two to six eval run ids")
    offset: int = Field(0, ge=0, le=runs.MAX_ROWS)
    limit: int = Field(100, ge=1, le=500)


@router.get("/tasks/{task_id}/compare", response=ComparisonOut)
def compare_runs(request, task_id: int, query: Query[CompareQuery]):
    """Permission: the task visible (else 404) and each run one of its runs visible to the caller (else
    404). Two to six finished runs on one eval set (else 400), row by row, differing answers first; a page
    of ``limit`` rows from ``offset``."""
    done = side_by_side.compare(actor=request.auth, task=_task(request, task_id), run_ids=query.run)
    return {
        "runs": done.runs,
        "right": done.right,
        "differing": done.differing,
        "count": len(done.rows),
        "rows": done.rows[query.offset : query.offset + query.limit],
    }


def _run(request, run_id: int) -> EndpointEvalRun:
    return gate.get_visible(request.auth, EndpointEvalRun, pk=run_id)


@router.get("/eval-runs/{run_id}", response=EvalRunOut)
def get_eval_run(request, run_id: int):
    """Permission: the run is visible (its team's members, org-wide roles), else 404."""
    return _run(request, run_id)


@router.post("/eval-runs/{run_id}/cancel", response=EvalRunOut)
def cancel_eval_run(request, run_id: int):
    """Permission: visible (else 404) and ``training.run`` in its team (else 403); a finished run: 409."""
    return runs.cancel_run(actor=request.auth, run=_run(request, run_id))
