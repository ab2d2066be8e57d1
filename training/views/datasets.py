"""The datasets pages: the list, a dataset with its versions, JSONL uploads and their ingest (progress,
line-numbered errors), a version's statistics with a preview of its rows, and its buttons: archive, delete an
archived version's stored files."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib import messages
from django.db.models import Count, Max, OuterRef, Subquery
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import buttons, htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.models import Team
from portfolio.audit.models import AuditEvent
from portfolio.errors import NotFound
from portfolio.formviews import submit
from portfolio.registry.choices import VersionKind
from portfolio.registry.storage import CorruptArtifact
from training import charts, dataset_purge, ingest_reuse, services
from training.choices import DatasetKind, DatasetVersionStatus, JobStatus, Split
from training.forms.datasets import DatasetCreateForm, DatasetFilterForm, DatasetUploadForm
from training.models import Dataset, DatasetVersion

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
        page = listing.paginate(request, datasets)
    context = {
        "form": form,
        "page": page,
        "query": listing.query_without(request, "page"),
        "filtered": listing.is_filtered(request),
        "can_create": gate.can(actor, "training.run"),
    }
    return htmx.page_or_fragment(
        request, "training/dataset_list.html", "training/partials/dataset_results.html", context
    )


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
    created = submit(
        request,
        form,
        lambda: services.create_dataset(actor=actor, **form.cleaned_data),
        success=lambda dataset: f"Dataset {dataset.name} created. Upload its first version.",
        then=lambda dataset: redirect("dataset-upload", team=dataset.owner_team.slug, name=dataset.name),
    )
    if created is not None:
        return created
    return render(request, "training/dataset_form.html", {"form": form})


# --- A dataset -------------------------------------------------------------------------------------
@require_GET
def dataset_detail(request, team: str, name: str):
    """Permission: the dataset is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    dataset = _dataset(actor, team, name)
    versions = dataset.versions.select_related("tokenizer_version__model", "created_by").order_by("-number")
    page = listing.paginate(request, versions)
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
            "ingesting": dataset.ingests.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])[:10],
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
    the upload is read. The file is stored and its ingest queued; the ingest's page follows it."""
    actor = actor_of(request)
    dataset = _dataset(actor, team, name)
    gate.require(actor, "training.run", dataset)
    if request.method == "POST":
        form = DatasetUploadForm(request.POST, request.FILES, actor=actor, dataset=dataset)
    else:
        form = DatasetUploadForm(actor=actor, dataset=dataset)

    def upload():
        data = form.cleaned_data
        return services.upload_version(
            actor=actor,
            dataset=dataset,
            chunks=data["file"].chunks(),
            filename=data["file"].name,
            base_version=data["base_version"],
            eval_fraction=data["eval_fraction"],
            seed=data["seed"],
        )

    done = submit(
        request,
        form,
        upload,
        then=lambda ingest: redirect(
            "dataset-ingest", team=dataset.owner_team.slug, name=dataset.name, ingest_id=ingest.pk
        ),
    )
    if done:
        return done
    return render(
        request,
        "training/upload_form.html",
        {"dataset": dataset, "form": form, "example": EXAMPLES[dataset.kind]},
    )


@require_GET
def dataset_ingest(request, team: str, name: str, ingest_id: int):
    """Permission: the dataset is visible, else 404. While the ingest runs, its progress bar polls this view
    (htmx gets the fragment, and HX-Refresh once it has ended); a refused file's problems are listed by line;
    a finished ingest opens its version (the new one, or the one holding the same rows)."""
    actor = actor_of(request)
    dataset = _dataset(actor, team, name)
    ingest = (
        dataset.ingests.select_related("tokenizer_version__model", "created_by", "version")
        .filter(pk=ingest_id)
        .first()
    )
    if ingest is None:
        raise NotFound("Upload not found.")
    ingest.dataset = dataset
    if wants_fragment(request):
        response = htmx.render(
            request, "training/partials/ingest_progress.html", {"dataset": dataset, "ingest": ingest}
        )
        if not ingest.is_active:
            response["HX-Refresh"] = "true"  # the outcome is on the whole page
        return response
    version = ingest.version
    if ingest.status == JobStatus.SUCCEEDED and version is not None:
        if ingest.created_version:
            messages.success(
                request,
                f"Version {version.number} created: {version.row_count:,} rows "
                f"({version.train_count:,} train, {version.eval_count:,} eval).",
            )
        elif ingest.progress_detail.startswith(ingest_reuse.REPAIRED):
            messages.success(
                request,
                f"These rows are version {version.number}'s, whose stored files were damaged: stored again.",
            )
        else:
            messages.info(
                request,
                f"These rows are identical to version {version.number}'s; no new version was created.",
            )
        return redirect(
            "dataset-version", team=dataset.owner_team.slug, name=dataset.name, number=version.number
        )
    return htmx.render(
        request,
        "training/ingest_detail.html",
        {
            "dataset": dataset,
            "ingest": ingest,
            "report": ingest.problems if ingest.problems.get("errors") else None,
            "can_upload": gate.can(actor, "training.run", dataset),
        },
    )


# --- A version -------------------------------------------------------------------------------------
def _rows_context(request, version: DatasetVersion) -> dict:
    split = request.GET.get("split", Split.TRAIN)
    if split not in (Split.TRAIN, Split.EVAL):
        split = Split.TRAIN
    rows: Sequence[dict]
    try:
        rows = services.split_rows(version, split, services.PAGE_BYTES)
        error = ""
    except CorruptArtifact as exc:
        rows, error = [], f"The stored rows could not be read: {exc}"
    except services.PurgedDataset as exc:
        rows, error = [], exc.message
    page = listing.paginate(request, rows, per_page=ROWS_PER_PAGE)
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
        return htmx.render(request, "training/partials/rows.html", {"version": version, **rows})
    stats = version.stats or {}
    lengths = stats.get("lengths", {})
    files = {entry["path"]: entry for entry in version.artifact.files} if version.artifact else {}
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
    return htmx.render(
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
            "is_ready": version.status == DatasetVersionStatus.READY,
            "purged": _purged(version) if version.artifact_id is None else None,
            "finetune_query": urlencode(finetune_query),
            **rows,
        },
    )


def _version_url(version: DatasetVersion) -> str:
    dataset = version.dataset
    return reverse(
        "dataset-version",
        kwargs={"team": dataset.owner_team.slug, "name": dataset.name, "number": version.number},
    )


@require_POST
def dataset_version_archive(request, team: str, name: str, number: int):
    """Permission: visible (else 404) and ``training.run`` (owner or engineer, else 403). A version still in
    use is refused with the reasons (``Conflict``), shown as a message."""
    actor = actor_of(request)
    version = _version(actor, team, name, number)
    gate.require(actor, "training.run", version.dataset)
    return buttons.press(
        request,
        lambda: dataset_purge.archive_version(actor=actor, version=version),
        success=f"{version.label} archived: its stored files can now be deleted.",
        back=_version_url(version),
    )


@require_POST
def dataset_version_purge(request, team: str, name: str, number: int):
    """Permission: visible (else 404) and ``training.run`` (else 403), as archiving. A version that is not
    archived, or is in use again, is refused with the reason (``Conflict``), shown as a message."""
    actor = actor_of(request)
    version = _version(actor, team, name, number)
    gate.require(actor, "training.run", version.dataset)
    return buttons.press(
        request,
        lambda: dataset_purge.purge_version(actor=actor, version=version),
        success=f"{version.label}'s stored files were deleted: it is no longer billed for storage.",
        back=_version_url(version),
    )


def _purged(version: DatasetVersion) -> AuditEvent | None:
    """The audit row of the deletion of the version's files (when and by whom), if they were deleted: part
    of the history of a version the viewer may see, as a model version's page shows it."""
    return (
        AuditEvent.objects.filter(
            action="dataset_version.purge",
            object_type=DatasetVersion._meta.label_lower,
            object_id=str(version.pk),
        )
        .order_by("-sequence")
        .first()
    )
