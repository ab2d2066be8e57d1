"""REST endpoints for fine-tuning jobs, evaluation runs and adapter merges."""

from datetime import datetime
from decimal import Decimal
from typing import Any

from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field, StrictFloat, StrictInt

from portfolio.accounts import gate
from portfolio.billing import costs
from portfolio.registry.models import Model, ModelVersion
from serving.models import ComputePool, Endpoint
from training import finetune, services
from training.choices import Method
from training.merges import services as merges
from training.models import DatasetVersion, EvalRun, FineTuneJob, MergeJob

router = Router(tags=["training"])


class JobOut(Schema):
    id: int
    owner_team_id: int
    base_version: str = Field(alias="base_version.label")
    dataset_version_id: int
    target_model: str = Field(alias="target_model.name")
    method: str
    teacher_endpoint: str | None = Field(None, alias="teacher_endpoint.name")
    distilled_dataset_version_id: int | None
    hyperparameters: dict[str, Any]
    pool: str = Field(alias="pool.name")
    node: str | None = Field(None, alias="node.name")
    gpu_indices: list[int] = Field(description="GPUs of its node the job holds (GPU pools)")
    status: str
    status_detail: str = Field(
        description="What happened; an errored job's traceback only for those who run the team's fine-tunes"
    )
    attempt: int
    step: int
    total_steps: int
    tokens_per_second: float
    eta_seconds: float | None
    loss_curve: list[list[float]]
    eval_curve: list[list[float]]
    output_version_id: int | None
    metrics: dict[str, Any]
    compute_seconds: float
    cpu_core_seconds: float
    gpu_seconds: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_status_detail(job: FineTuneJob, context) -> str:
        return services.job_detail_for(context["request"].auth, job)


class JobIn(Schema):
    base_version_id: int
    dataset_version_id: int
    pool: str
    method: Method = Method.LORA
    # Strict numbers: a JSON true is not taken for 1 (an `epochs: true` started a one-epoch job).
    hyperparameters: dict[str, StrictInt | StrictFloat | str | list[str]] = Field(
        {},
        description="Numbers (epochs, learning_rate, lora_r, ...); for LoRA also lora_targets (attention, "
        "attention+mlp, attention+experts, attention+state) and target_modules (a list of layer names, "
        "checked against the base's config before the job is queued). Blank ones are chosen when the run "
        "starts.",
    )
    target_model: str | None = Field(
        None, description="Register the result under this model (default: the base's)"
    )
    teacher_endpoint: str | None = Field(
        None,
        description="Distillation: this endpoint (of the dataset's team) first answers the dataset's prompts "
        "through the gateway; the base version is then trained on its answers",
    )


class EvalOut(Schema):
    id: int
    version_id: int
    version: str = Field(alias="version.label")
    dataset_version_id: int
    job_id: int | None
    status: str
    metrics: dict[str, Any]
    created_at: datetime


def _job(request, job_id: int) -> FineTuneJob:
    return gate.get_visible(request.auth, FineTuneJob, pk=job_id)


@router.get("/jobs", response=list[JobOut])
@paginate(PageNumberPagination, page_size=50)
def list_jobs(request, status: str = ""):
    # The owner team joined: an errored job's detail asks ``gate.can`` of it, and a department manager's
    # check reads the team's department.
    jobs = gate.visible(request.auth, FineTuneJob).select_related(
        "owner_team", "base_version__model", "pool", "node", "target_model", "teacher_endpoint"
    )
    if status:
        jobs = jobs.filter(status=status)
    return jobs.order_by("-created_at", "-id")


@router.post("/jobs", response={201: JobOut})
def start_job(request, payload: JobIn):
    actor = request.auth
    base = gate.get_visible(actor, ModelVersion, pk=payload.base_version_id)
    dataset_version = gate.get_visible(actor, DatasetVersion, pk=payload.dataset_version_id)
    pool = gate.get_visible(actor, ComputePool, name=payload.pool)
    target = gate.get_visible(actor, Model, name=payload.target_model) if payload.target_model else None
    if payload.teacher_endpoint:
        job = finetune.start_distillation(
            actor=actor,
            teacher=gate.get_visible(actor, Endpoint, name=payload.teacher_endpoint),
            prompts=dataset_version,
            student=base,
            pool=pool,
            method=payload.method,
            hyperparameters=payload.hyperparameters,
            target_model=target,
        )
        return Status(201, job)
    job = finetune.start_job(
        actor=actor,
        base_version=base,
        dataset_version=dataset_version,
        pool=pool,
        method=payload.method,
        hyperparameters=payload.hyperparameters,
        target_model=target,
    )
    return Status(201, job)


@router.get("/jobs/{job_id}", response=JobOut)
def get_job(request, job_id: int):
    return _job(request, job_id)


@router.post("/jobs/{job_id}/cancel", response=JobOut)
def cancel_job(request, job_id: int):
    return finetune.cancel_job(actor=request.auth, job=_job(request, job_id))


@router.get("/evals", response=list[EvalOut])
@paginate(PageNumberPagination, page_size=50)
def list_evals(request, version_id: int | None = None, dataset_version_id: int | None = None):
    runs = gate.visible(request.auth, EvalRun).select_related("version__model")
    if version_id is not None:
        runs = runs.filter(version_id=version_id)
    if dataset_version_id is not None:
        runs = runs.filter(dataset_version_id=dataset_version_id)
    return runs.order_by("-created_at", "-id")


class MergeJobOut(Schema):
    id: int
    owner_team_id: int
    adapter: str = Field(alias="adapter.label")
    status: str
    status_detail: str
    output_version: str | None = Field(None, alias="output_version.label")
    node: str | None = Field(None, alias="node.name", description="Where its merge process ran (a node)")
    compute_seconds: float = Field(description="Wall time of its merge process")
    cpu_core_seconds: float
    compute_cost: Decimal = Field(description="Its compute at its node's pool price (the statement's line)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_compute_cost(job: MergeJob) -> Decimal:
        return costs.job_compute(job.pk, kinds=("merge",)).cost

    @staticmethod
    def resolve_status_detail(job: MergeJob, context) -> str:
        return merges.detail_for(context["request"].auth, job)


@router.get("/merges/{merge_id}", response=MergeJobOut)
def get_merge(request, merge_id: int):
    """A merge started with POST /models/{name}/versions/{number}/merge: its state and, once it succeeded,
    the merged version."""
    return gate.get_visible(request.auth, MergeJob, pk=merge_id)
