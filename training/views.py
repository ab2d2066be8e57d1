"""Web pages of training: the datasets list, a dataset with its versions, JSONL uploads with
line-numbered errors, a version's statistics with a preview of its rows, and fine-tuning jobs (the list,
the start form, a job's live progress, loss curves and log, and its eval results beside the base's).

Every view decides access with the gate: a dataset the actor may not see answers 404
(``gate.get_visible``), a change needs ``training.run`` (owner or engineer of the dataset's team),
else 403; the docstrings say which. Changes go through ``training.services`` and ``training.finetune``.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Max, OuterRef, Q, Subquery
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.models import Team
from portfolio.errors import Conflict, DomainError, Invalid, NotFound
from portfolio.registry.choices import VersionKind
from portfolio.registry.forms import apply_registry_error
from portfolio.registry.storage import CorruptArtifact
from training import charts, finetune, services
from training.choices import DatasetKind, JobStatus, Method, Split
from training.forms import (
    HYPERPARAMETER_FIELDS,
    DatasetCreateForm,
    DatasetFilterForm,
    DatasetUploadForm,
    JobFilterForm,
    JobStartForm,
)
from training.models import Dataset, DatasetVersion, EvalRun, FineTuneJob

PAGE_SIZE = 50
ROWS_PER_PAGE = 20
GET_POST = require_http_methods(["GET", "POST"])


def _dataset(actor: Actor, team: str, name: str) -> Dataset:
    """A dataset the actor may see, by its team's slug and its name, else 404."""
    return gate.get_visible(actor, Dataset, owner_team__slug=team, name=name)


def _version(actor: Actor, team: str, name: str, number: int) -> DatasetVersion:
    dataset = _dataset(actor, team, name)
    version = (
        dataset.versions.select_related("artifact", "created_by", "tokenizer_version__model")
        .filter(number=number)
        .first()
    )
    if version is None:
        raise NotFound("Dataset version not found.")
    version.dataset = dataset
    return version


# --- The list --------------------------------------------------------------------------------------
@require_GET
def training_list(request):
    """Permission: any signed-in user; ``gate.visible`` lists only the datasets of their teams (every
    dataset for org-wide roles). htmx gets the results fragment (live filtering)."""
    actor = actor_of(request)
    visible = gate.visible(actor, Dataset)
    form = DatasetFilterForm(request.GET, visible_datasets=visible)
    page = None
    if form.is_valid():
        latest = DatasetVersion.objects.filter(dataset=OuterRef("pk")).order_by("-number")
        datasets = (
            form.apply(visible)
            .select_related("owner_team")
            .annotate(
                version_count=Count("versions"),
                latest_number=Max("versions__number"),
                latest_rows=Subquery(latest.values("row_count")[:1]),
                latest_train=Subquery(latest.values("train_count")[:1]),
                latest_eval=Subquery(latest.values("eval_count")[:1]),
                latest_at=Subquery(latest.values("created_at")[:1]),
            )
            .order_by("owner_team__slug", "name", "id")
        )
        page = Paginator(datasets, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "query": _query_without(request, "page"),
        "filtered": any(value for key, value in request.GET.items() if key != "page"),
        "can_create": gate.can(actor, "training.run"),
    }
    template = (
        "training/partials/dataset_results.html" if wants_fragment(request) else "training/dataset_list.html"
    )
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _query_without(request, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


@GET_POST
def dataset_create(request):
    """Permission: ``training.run`` in some team (owner or engineer), and in the team chosen: a team the
    actor may not see answers 404, one they may see but not train in 403."""
    actor = actor_of(request)
    gate.require(actor, "training.run")
    if request.method == "POST" and request.POST.get("owner_team"):
        team = gate.get_visible(actor, Team, pk=request.POST["owner_team"])
        gate.require(actor, "training.run", team)
    form = DatasetCreateForm(request.POST if request.method == "POST" else None, actor=actor)
    if form.is_valid():
        try:
            dataset = services.create_dataset(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_registry_error(form, exc)
        else:
            messages.success(request, f"Dataset {dataset.name} created. Upload its first version.")
            return redirect("dataset-upload", team=dataset.owner_team.slug, name=dataset.name)
    return render(request, "training/dataset_form.html", {"form": form})


# --- A dataset -------------------------------------------------------------------------------------
@require_GET
def dataset_detail(request, team: str, name: str):
    """Permission: the dataset is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    dataset = _dataset(actor, team, name)
    versions = dataset.versions.select_related("tokenizer_version__model", "created_by").order_by("-number")
    page = Paginator(versions, PAGE_SIZE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    for version in page.object_list:
        stats = version.stats or {}
        version.lengths = stats.get("lengths", {})
        version.dropped = stats.get("duplicates", 0) + stats.get("empty_lines", 0)
    return render(
        request,
        "training/dataset_detail.html",
        {
            "dataset": dataset,
            "page": page,
            "latest": dataset.versions.order_by("-number").first(),
            "can_upload": gate.can(actor, "training.run", dataset),
            "example": EXAMPLES[dataset.kind],
        },
    )


EXAMPLES = {
    DatasetKind.CHAT: '{"messages": [{"role": "system", "content": "Route the ticket…"}, '
    '{"role": "user", "content": "I was charged twice"}, {"role": "assistant", "content": "billing"}]}',
    DatasetKind.COMPLETION: '{"prompt": "Summarize: The meeting moved to…", "completion": "Meeting moved to Friday."}',
    DatasetKind.CLASSIFICATION: '{"text": "I was charged twice this month", "label": "billing"}',
}


@GET_POST
def dataset_upload(request, team: str, name: str):
    """Permission: visible (else 404) and ``training.run`` (owner or engineer, else 403), checked before
    the upload is read. The file is validated in this request; its problems are listed by line number
    and nothing is kept, else the new (or identical existing) version opens."""
    actor = actor_of(request)
    dataset = _dataset(actor, team, name)
    gate.require(actor, "training.run", dataset)
    report = None
    if request.method == "POST":
        form = DatasetUploadForm(request.POST, request.FILES, actor=actor, dataset=dataset)
    else:
        form = DatasetUploadForm(actor=actor, dataset=dataset)
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            version, created = services.upload_version(
                actor=actor,
                dataset=dataset,
                chunks=upload.chunks(),
                filename=upload.name,
                base_version=form.cleaned_data["base_version"],
                eval_fraction=form.cleaned_data["eval_fraction"],
                seed=form.cleaned_data["seed"],
            )
        except services.DatasetInvalid as exc:
            report = exc.report
            form.add_error(
                "file",
                f"{report.summary()}. No version was created: fix the lines listed above and upload again.",
            )
        except DomainError as exc:
            apply_registry_error(form, exc)
        else:
            if created:
                messages.success(
                    request,
                    f"Version {version.number} created: {version.row_count:,} rows "
                    f"({version.train_count:,} train, {version.eval_count:,} eval).",
                )
            else:
                messages.info(
                    request,
                    f"These rows are identical to version {version.number}'s; no new version was created.",
                )
            return redirect(
                "dataset-version", team=dataset.owner_team.slug, name=dataset.name, number=version.number
            )
    return render(
        request,
        "training/upload_form.html",
        {
            "dataset": dataset,
            "form": form,
            "report": report,
            "example": EXAMPLES[dataset.kind],
        },
    )


# --- A version -------------------------------------------------------------------------------------
def _rows_context(request, version: DatasetVersion) -> dict:
    split = request.GET.get("split", Split.TRAIN)
    if split not in (Split.TRAIN, Split.EVAL):
        split = Split.TRAIN
    try:
        rows = services.split_rows(version, split)
        error = ""
    except CorruptArtifact as exc:
        rows, error = [], f"The stored rows could not be read: {exc}"
    page = Paginator(rows, ROWS_PER_PAGE).get_page(request.GET.get("page"))
    base = reverse(
        "dataset-version",
        kwargs={
            "team": version.dataset.owner_team.slug,
            "name": version.dataset.name,
            "number": version.number,
        },
    )
    return {
        "split": split,
        "rows_page": page,
        "rows_error": error,
        "rows_query": f"split={split}",
        "rows_url": base,
    }


@require_GET
def dataset_version(request, team: str, name: str, number: int):
    """Permission: the dataset is visible (``gate.get_visible``), else 404. htmx gets the rows fragment
    (switching between train and eval, paging)."""
    actor = actor_of(request)
    version = _version(actor, team, name, number)
    rows = _rows_context(request, version)
    if wants_fragment(request):
        response = render(request, "training/partials/rows.html", {"version": version, **rows})
        patch_vary_headers(response, ["HX-Request"])
        return response
    stats = version.stats or {}
    lengths = stats.get("lengths", {})
    files = {entry["path"]: entry for entry in version.artifact.files}
    downloads = [
        {
            "name": path,
            "size": files[path]["size"],
            "href": reverse(
                "api:download_dataset_file",
                kwargs={"dataset_id": version.dataset_id, "number": version.number, "filename": path},
            ),
        }
        for path in (services.TRAIN_FILE, services.EVAL_FILE, services.ORIGINAL_FILE)
        if path in files
    ]
    tokenizer = version.tokenizer_version
    visible_tokenizer = (
        tokenizer
        if tokenizer is not None and gate.visible(actor, type(tokenizer)).filter(pk=tokenizer.pk).exists()
        else None
    )
    # "Fine-tune on this version" starts from the base whose tokenizer measured the rows, when it is one.
    finetune_query = {"dataset_version": version.pk}
    if visible_tokenizer and visible_tokenizer.kind == VersionKind.BASE:
        finetune_query["base_version"] = visible_tokenizer.pk
    response = render(
        request,
        "training/version_detail.html",
        {
            "dataset": version.dataset,
            "version": version,
            "stats": stats,
            "lengths": lengths,
            "histogram": charts.length_histogram(lengths),
            "label_bars": charts.label_bars(version.labels or []),
            "downloads": downloads,
            "tokenizer": visible_tokenizer,
            "newer": version.dataset.versions.filter(number__gt=version.number).order_by("-number").first(),
            "can_train": gate.can(actor, "training.run", version.dataset),
            "finetune_query": urlencode(finetune_query),
            **rows,
        },
    )
    patch_vary_headers(response, ["HX-Request"])
    return response


# --- Fine-tuning jobs ------------------------------------------------------------------------------
JOB_POLL_SECONDS = 2
JOB_LIST_POLL_SECONDS = 5
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


def duration_label(seconds: float | None) -> str:
    """A span as people read it: "45 s", "3 min 12 s", "2 h 5 min"."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.3f}" if 0 < hours < 0.1 else f"{hours:,.2f}"


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
            .select_related("base_version__model", "dataset_version__dataset__owner_team", "pool", "node")
            .order_by("-created_at", "-id")
        )
        page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
        now = timezone.now()
        page.object_list = [_with_progress(job, now) for job in page.object_list]
    context = {
        "form": form,
        "page": page,
        "query": _query_without(request, "page"),
        "filtered": any(value for key, value in request.GET.items() if key != "page"),
        "polling": bool(page) and any(job.active for job in page.object_list),
        "poll_seconds": JOB_LIST_POLL_SECONDS,
        "can_start": gate.can(actor, "training.run"),
    }
    template = "training/partials/job_results.html" if wants_fragment(request) else "training/job_list.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


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
    if form.is_valid():
        data = form.cleaned_data
        try:
            job = finetune.start_job(
                actor=actor,
                base_version=data["base_version"],
                dataset_version=data["dataset_version"],
                pool=data["pool"],
                method=data["method"],
                hyperparameters=form.hyperparameters(),
                target_model=data["target_model"],
            )
        except DomainError as exc:
            apply_registry_error(
                form, exc, {f"hyperparameters.{name}": name for name in HYPERPARAMETER_FIELDS}
            )
        else:
            messages.success(
                request, f"Fine-tune #{job.pk} queued on {job.node.name}; it starts in a moment."
            )
            return redirect("job-detail", job_id=job.pk)
    return render(request, "training/job_form.html", {"form": form})


def _eval_comparison(actor: Actor, job: FineTuneJob) -> dict | None:
    """This job's eval runs side by side, the base first: the headline metrics, F1 per label, and the
    change from the base to the fine-tuned version (green where it improved, red where it got worse)."""
    runs = list(
        gate.visible(actor, EvalRun)
        .filter(Q(job=job) | Q(version_id=job.base_version_id, dataset_version_id=job.dataset_version_id))
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
    for key, label, unit, higher_better in EVAL_METRICS:
        values = [run.metrics.get(key) for run in columns]
        if all(value is None for value in values):
            continue
        rows.append(
            {
                "label": label,
                "values": [_metric(value, unit) for value in values],
                **_change(first.metrics.get(key), last.metrics.get(key), unit, higher_better, compare),
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
    return {"columns": columns, "rows": rows, "f1_rows": f1_rows, "compare": compare}


# (metrics key, label, unit, whether higher is better), in the order the comparison lists them.
EVAL_METRICS = (
    ("accuracy", "Accuracy", "share", True),
    ("exact_match", "Exact match", "share", True),
    ("contains", "Contains the answer", "share", True),
    ("perplexity", "Perplexity of the answers", "plain", False),
    ("rows", "Rows scored", "count", None),
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
    else:
        text, small = f"{delta:+,.2f}", abs(delta) < 0.005
    if small:
        return {"change": "±0", "tone": "same"}
    return {"change": text.replace("-", "−"), "tone": "better" if (delta > 0) == higher_better else "worse"}


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
            "node_hours": _hours(job.compute_seconds),
            "core_hours": _hours(job.cpu_core_seconds),
            "gpu_hours": _hours(job.gpu_seconds),
            "wall": duration_label(job.compute_seconds),
        },
        "can_run": gate.can(actor, "training.run", job),
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
    "seed",
    "checkpoint_every",
)


def _hp_value(name: str, value) -> str:
    # Before the run starts, 0 epochs and a 0 rate mean "chosen when the run starts" (training.lora).
    if name in ("epochs", "learning_rate") and not value:
        return "auto"
    if name == "learning_rate":
        return f"{value:g}"
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
    if wants_fragment(request):
        response = render(request, "training/partials/job_live.html", context)
        if not job.active:
            response["HX-Refresh"] = "true"  # the produced version and eval results are on the whole page
        patch_vary_headers(response, ["HX-Request"])
        return response
    context["evals"] = _eval_comparison(actor, job)
    response = render(request, "training/job_detail.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


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
