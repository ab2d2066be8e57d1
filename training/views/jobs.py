"""The fine-tuning pages: the jobs list, the start form, a job's live progress (polled while it runs), loss
curves, log and settings, and cancelling."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.billing import costs
from portfolio.errors import Conflict, Invalid, NotFound
from portfolio.formviews import submit
from portfolio.registry.models import ModelVersion
from portfolio.templatetags.formatting import compute_hours, duration_label
from training import architectures, charts, finetune, services
from training.choices import JobStatus, Method
from training.forms.jobs import HYPERPARAMETER_FIELDS, JobFilterForm, JobStartForm
from training.models import DatasetVersion, FineTuneJob
from training.views.evals import eval_comparison

GET_POST = require_http_methods(["GET", "POST"])
JOB_POLL_SECONDS = 2
JOB_LIST_POLL_SECONDS = 5
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


def _with_progress(job: FineTuneJob, now) -> FineTuneJob:
    """Adds what the list and the page show of a job's progress: percent, duration, whether it is live."""
    job.active = job.status in ACTIVE
    if job.status == JobStatus.SUCCEEDED:
        job.percent = 100
    elif job.total_steps:
        job.percent = min(100, round(100 * job.step / job.total_steps))
    else:
        job.percent = None  # no total yet: an indeterminate bar while running
    end = job.finished_at or (now if job.status == JobStatus.RUNNING else None)
    job.duration = duration_label((end - job.started_at).total_seconds()) if job.started_at and end else ""
    return job


def _job(actor: Actor, job_id: int) -> FineTuneJob:
    """A job the actor may see, else 404."""
    jobs = gate.visible(actor, FineTuneJob).select_related(
        "owner_team",
        "base_version__model",
        "dataset_version__dataset__owner_team",
        "target_model",
        "pool",
        "node",
        "output_version__model",
        "created_by",
        "teacher_endpoint",
        "distilled_dataset_version__dataset__owner_team",
    )
    try:
        return jobs.get(pk=job_id)
    except FineTuneJob.DoesNotExist:
        raise NotFound("Fine-tune job not found.") from None


@require_GET
def job_list(request):
    """Permission: any signed-in user; ``gate.visible`` lists only the jobs of their teams (every job for
    org-wide roles). htmx gets the results fragment (the status filter, and a refresh every 5 s while a job
    on the page is queued or running)."""
    actor = actor_of(request)
    form = JobFilterForm(request.GET)
    page = None
    if form.is_valid():
        jobs = (
            form.apply(gate.visible(actor, FineTuneJob))
            .select_related(
                "base_version__model",
                "dataset_version__dataset__owner_team",
                "pool",
                "node",
                "teacher_endpoint",
            )
            .order_by("-created_at", "-id")
        )
        page = listing.paginate(request, jobs)
        now = timezone.now()
        page.object_list = [_with_progress(job, now) for job in page.object_list]
    context = {
        "form": form,
        "page": page,
        "query": listing.query_without(request, "page"),
        "filtered": listing.is_filtered(request),
        "polling": bool(page) and any(job.active for job in page.object_list),
        "poll_seconds": JOB_LIST_POLL_SECONDS,
        "can_start": gate.can(actor, "training.run"),
    }
    return htmx.page_or_fragment(
        request, "training/job_list.html", "training/partials/job_results.html", context
    )


@GET_POST
def job_create(request):
    """Permission: ``training.run`` in some team (owner or engineer), and in the team of the dataset version
    chosen: one the actor may not see answers 404, one they may see but not train in 403. The service's
    refusals (QLoRA on a CPU pool, no ready node, a hyperparameter out of range) show as form errors."""
    actor = actor_of(request)
    gate.require(actor, "training.run")
    if request.method == "POST":
        if request.POST.get("dataset_version"):
            chosen = gate.get_visible(actor, DatasetVersion, pk=request.POST["dataset_version"])
            gate.require(actor, "training.run", chosen)
        form = JobStartForm(request.POST, actor=actor)
    else:
        initial = {
            key: request.GET[key]
            for key in ("base_version", "dataset_version", "pool")
            if request.GET.get(key)
        }
        form = JobStartForm(initial=initial, actor=actor)

    def start() -> FineTuneJob:
        data = form.cleaned_data
        return finetune.start_job(
            actor=actor,
            base_version=data["base_version"],
            dataset_version=data["dataset_version"],
            pool=data["pool"],
            method=data["method"],
            hyperparameters=form.hyperparameters(),
            target_model=data["target_model"],
        )

    queued = submit(
        request,
        form,
        start,
        success=lambda job: f"Fine-tune #{job.pk} queued on {job.placed_on}; it starts in a moment.",
        then=lambda job: redirect("job-detail", job_id=job.pk),
        fields={f"hyperparameters.{name}": name for name in HYPERPARAMETER_FIELDS},
    )
    if queued is not None:
        return queued
    try:
        targets = _targets_context(actor, form.data if form.is_bound else form.initial)
    except NotFound:
        targets = {"base": None}  # a base or dataset version the form refuses as an invalid choice
    return render(request, "training/job_form.html", {"form": form, **targets})


def _pk(value) -> int | None:
    """A row id from the query or form, else None. Not isdigit(): "²" is a digit that int() refuses; and at
    most 18 digits, as a bigint holds, since int() refuses a string over 4,300 digits with a ValueError."""
    text = str(value or "")
    return int(text) if text.isdecimal() and len(text) <= 18 else None


def _targets_context(actor: Actor, values) -> dict:
    """The preview of the layers LoRA adapts for the base, dataset version and choice in ``values``."""
    base_id, dataset_id = _pk(values.get("base_version")), _pk(values.get("dataset_version"))
    if base_id is None:
        return {"base": None}
    base = gate.get_visible(actor, ModelVersion, pk=base_id)
    rows = None
    if dataset_id is not None:
        rows = gate.get_visible(actor, DatasetVersion, pk=dataset_id).train_count
    choice = str(values.get("lora_targets") or "")
    return {"base": base, "rows": rows, "preview": architectures.preview(base, rows or 0, choice)}


@require_GET
def job_targets(request):
    """The start form's preview of the layers LoRA adapts for the chosen base (``base_version``), dataset
    version (its train rows) and ``lora_targets`` choice, read from the base's config.json. Permission:
    ``training.run`` in some team, as the form; a base or dataset version the actor may not see answers 404."""
    actor = actor_of(request)
    gate.require(actor, "training.run")
    return render(request, "training/partials/job_targets.html", _targets_context(actor, request.GET))


def _job_live_context(actor: Actor, job: FineTuneJob) -> dict:
    """What the polled parts of the job page show: status, progress, curves, log, resolved settings."""
    now = timezone.now()
    _with_progress(job, now)
    eta = job.eta_seconds
    hyperparameters = dict(job.hyperparameters or {})
    method_is_lora = job.method != Method.FULL
    settings_rows = [
        {"name": name, "value": _hp_value(name, hyperparameters[name])}
        for name in HYPERPARAMETER_ORDER
        if name in hyperparameters and (method_is_lora or not name.startswith("lora_"))
    ]
    return {
        "job": job,
        "polling": job.active,
        "poll_seconds": JOB_POLL_SECONDS,
        "eta": duration_label(eta) if eta is not None else "",
        "heartbeat_age": duration_label((now - job.heartbeat_at).total_seconds()) if job.heartbeat_at else "",
        "train_loss": job.loss_curve[-1][1] if job.loss_curve else None,
        "eval_loss": job.eval_curve[-1][1] if job.eval_curve else None,
        "chart": charts.loss_chart(job.loss_curve, job.eval_curve, total_steps=job.total_steps),
        "settings_rows": settings_rows,
        "target_modules": ", ".join(hyperparameters.get("target_modules") or []) if method_is_lora else "",
        "compute": {
            "node_hours": compute_hours(job.compute_seconds),
            "core_hours": compute_hours(job.cpu_core_seconds),
            "gpu_hours": compute_hours(job.gpu_seconds),
            "wall": duration_label(job.compute_seconds),
        },
        "can_run": gate.can(actor, "training.run", job),
        # The trainer's log and an errored job's traceback: only for those who run the team's fine-tunes.
        "can_see_logs": gate.can(actor, "training.run", job),
        "status_detail": services.job_detail_for(actor, job),
        "is_problem": job.status in (JobStatus.FAILED, JobStatus.ERRORED),
    }


HYPERPARAMETER_ORDER = (
    "epochs",
    "learning_rate",
    "batch_size",
    "max_length",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "seed",
    "checkpoint_every",
)


def _hp_value(name: str, value) -> str:
    # Before the run starts, 0 epochs and a 0 rate mean "chosen when the run starts" (training.lora).
    if name in ("epochs", "learning_rate") and not value:
        return "auto"
    if name == "learning_rate":
        return f"{value:g}"
    if name == "lora_targets":
        return value or "by the base's family"
    if name == "checkpoint_every" and not value:
        return "never"
    return str(value)


@require_GET
def job_detail(request, job_id: int):
    """Permission: the job is visible (``gate.get_visible``: its team's members and org-wide roles), else
    404. htmx gets the live parts, polled every 2 s while the job is queued or running; the poll that finds
    it finished asks htmx to reload the page, which then shows the result and stops polling."""
    actor = actor_of(request)
    job = _job(actor, job_id)
    context = _job_live_context(actor, job)
    context["compute_cost"] = costs.job_compute(job.pk)
    context["currency"] = settings.BILLING_CURRENCY
    if wants_fragment(request):
        response = htmx.render(request, "training/partials/job_live.html", context)
        if not job.active:
            response["HX-Refresh"] = "true"  # the produced version and eval results are on the whole page
        return response
    context["evals"] = eval_comparison(actor, job)
    return htmx.render(request, "training/job_detail.html", context)


@require_POST
def job_cancel(request, job_id: int):
    """Permission: visible (else 404) and ``training.run`` in its team (owner or engineer, else 403). A
    queued job ends at once; a running one is stopped by its node within a few seconds."""
    actor = actor_of(request)
    job = _job(actor, job_id)
    gate.require(actor, "training.run", job)
    try:
        job = finetune.cancel_job(actor=actor, job=job)
    except (Invalid, Conflict) as exc:
        messages.error(request, exc.message)
    else:
        if job.status == JobStatus.CANCELLED:
            messages.success(request, f"Fine-tune #{job.pk} cancelled before it started.")
        else:
            messages.success(
                request, f"Stopping fine-tune #{job.pk}: its node stops the trainer in a few seconds."
            )
    return redirect("job-detail", job_id=job.pk)
