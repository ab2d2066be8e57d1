"""REST endpoints for training data: datasets, their versions (JSONL uploads and their ingest), statistics and
rows, archiving a version and deleting an archived version's stored files."""

from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Q
from django.http import FileResponse
from ninja import File, Form, Router, Schema, Status
from ninja.files import UploadedFile
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Team
from portfolio.errors import Invalid, NotFound
from portfolio.registry.models import ModelVersion
from training import dataset_purge, ingest, services, splitting
from training.choices import DatasetKind, Split
from training.models import Dataset, DatasetVersion

router = Router(tags=["training"])


class DatasetOut(Schema):
    id: int
    name: str
    owner_team_id: int
    team: str = Field(alias="owner_team.slug")
    kind: str
    description: str
    created_at: datetime
    version_count: int = 0
    latest_version: int | None = None


class DatasetIn(Schema):
    name: str = Field(min_length=2, max_length=80)
    owner_team_id: int
    kind: DatasetKind = DatasetKind.CHAT
    description: str = Field("", max_length=services.MAX_DESCRIPTION)


class DatasetVersionOut(Schema):
    id: int
    dataset_id: int
    number: int
    status: str
    shape: str
    content_sha256: str
    artifact_id: str | None = Field(description="None once archived and its stored files deleted (purged)")
    row_count: int
    train_count: int
    eval_count: int
    eval_fraction: float
    split_seed: int
    tokenizer_version_id: int | None
    context_length: int | None
    source_filename: str
    size_bytes: int
    created_at: datetime


class DatasetVersionDetail(DatasetVersionOut):
    stats: dict[str, Any]
    labels: list[dict[str, Any]]
    files: list[dict[str, Any]] = []

    @staticmethod
    def resolve_files(obj) -> list[dict[str, Any]]:
        return obj.artifact.files if obj.artifact is not None else []


class DatasetIngestOut(Schema):
    """An upload on its way to a version: poll it until ``status`` is final."""

    id: int
    dataset_id: int
    status: str = Field(description="queued, running, succeeded, failed (see error) or errored")
    progress: int = Field(description="Percent")
    progress_detail: str
    rows_done: int
    rows_total: int
    source_filename: str
    size_bytes: int
    created_at: datetime
    finished_at: datetime | None
    version: int | None = Field(None, description="The version made, or the existing one with the same rows")
    created_version: bool = Field(description="False when an existing version holds the same rows")
    error: dict[str, Any] | None = Field(None, description="A refusal, as an upload once answered it (400)")

    @staticmethod
    def resolve_version(obj) -> int | None:
        return obj.version.number if obj.version_id else None

    @staticmethod
    def resolve_error(obj) -> dict[str, Any] | None:
        refused = ingest.refusal(obj)
        if refused is None:
            return None
        return {"code": refused.code, "message": refused.message, "fields": refused.fields}


class RowOut(Schema):
    index: int = Field(description="1-based position of the row in its split")
    row: dict[str, Any] | None = Field(
        description="The row; null past the page's 4 MiB of rows (a page's first row is always whole: read "
        "it with a smaller page_size, or from the split's file)"
    )
    bytes: int = Field(description="The size of the row's line in the split's file")


def _dataset(request, dataset_id: int) -> Dataset:
    return gate.get_visible(request.auth, Dataset, pk=dataset_id)


def _version(request, dataset_id: int, number: int) -> DatasetVersion:
    dataset = _dataset(request, dataset_id)
    version = dataset.versions.select_related("artifact").filter(number=number).first()
    if version is None:
        raise NotFound("Dataset version not found.")
    version.dataset = dataset
    return version


@router.get("/datasets", response=list[DatasetOut])
@paginate(PageNumberPagination, page_size=50)
def list_datasets(request, q: str = "", kind: str = "", team_id: int | None = None):
    datasets = gate.visible(request.auth, Dataset).select_related("owner_team")
    if q:
        datasets = datasets.filter(Q(name__icontains=q) | Q(description__icontains=q))
    if kind:
        datasets = datasets.filter(kind=kind)
    if team_id is not None:
        datasets = datasets.filter(owner_team_id=team_id)
    return datasets.annotate(
        version_count=Count("versions"), latest_version=Max("versions__number")
    ).order_by("owner_team__slug", "name", "id")


@router.post("/datasets", response={201: DatasetOut})
def create_dataset(request, payload: DatasetIn):
    team = gate.get_visible(request.auth, Team, pk=payload.owner_team_id)
    dataset = services.create_dataset(
        actor=request.auth,
        owner_team=team,
        name=payload.name,
        kind=payload.kind,
        description=payload.description,
    )
    return Status(201, dataset)


@router.get("/datasets/{dataset_id}", response=DatasetOut)
def get_dataset(request, dataset_id: int):
    dataset = _dataset(request, dataset_id)
    numbers = list(dataset.versions.values_list("number", flat=True))
    dataset.version_count, dataset.latest_version = len(numbers), max(numbers, default=None)
    return dataset


@router.get("/datasets/{dataset_id}/versions", response=list[DatasetVersionOut])
@paginate(PageNumberPagination, page_size=50)
def list_dataset_versions(request, dataset_id: int):
    return _dataset(request, dataset_id).versions.order_by("-number")


@router.post("/datasets/{dataset_id}/versions", response={202: DatasetIngestOut})
def upload_dataset_version(
    request,
    dataset_id: int,
    file: File[UploadedFile],
    base_version_id: Form[int | None] = None,
    eval_fraction: Form[float] = splitting.DEFAULT_EVAL_FRACTION,
    seed: Form[int] = splitting.DEFAULT_SEED,
):
    """Upload a JSONL file as the next version (multipart): answers 202 with its ingest, which a worker runs.
    Poll ``GET /datasets/{dataset_id}/ingests/{id}``: once ``succeeded``, ``version`` is the new version's
    number (or, ``created_version`` false, the existing version holding the same rows); once ``failed``,
    ``error`` holds the problems by line number in ``error.fields.file`` (the first 50; ``error.message``
    counts them all), and nothing was created."""
    dataset = _dataset(request, dataset_id)
    gate.require(request.auth, "training.run", dataset)
    base = None
    if base_version_id is not None:
        base = ModelVersion.objects.visible_to(request.auth).filter(pk=base_version_id).first()
        if base is None:  # none, or another team's: alike, so that ids tell nothing
            raise Invalid("base_version_id: No such version.")
    upload = services.upload_version(
        actor=request.auth,
        dataset=dataset,
        chunks=file.chunks(),
        filename=file.name or "",
        base_version=base,
        eval_fraction=eval_fraction,
        seed=seed,
    )
    return Status(202, upload)


@router.get("/datasets/{dataset_id}/ingests/{ingest_id}", response=DatasetIngestOut)
def get_dataset_ingest(request, dataset_id: int, ingest_id: int):
    dataset = _dataset(request, dataset_id)
    found = dataset.ingests.select_related("version").filter(pk=ingest_id).first()
    if found is None:
        raise NotFound("Upload not found.")
    return found


@router.get("/datasets/{dataset_id}/versions/{number}", response=DatasetVersionDetail)
def get_dataset_version(request, dataset_id: int, number: int):
    return _version(request, dataset_id, number)


@router.post("/datasets/{dataset_id}/versions/{number}/archive", response=DatasetVersionOut)
def archive_dataset_version(request, dataset_id: int, number: int):
    """Archive a version no queued or running job, eval run or upload uses; its files can then be deleted."""
    return dataset_purge.archive_version(actor=request.auth, version=_version(request, dataset_id, number))


@router.post("/datasets/{dataset_id}/versions/{number}/purge", response=DatasetVersionOut)
def purge_dataset_version(request, dataset_id: int, number: int):
    """Delete an archived version's stored files (no longer billed); files another version holds stay."""
    return dataset_purge.purge_version(actor=request.auth, version=_version(request, dataset_id, number))


@router.get("/datasets/{dataset_id}/versions/{number}/rows", response=list[RowOut])
@paginate(PageNumberPagination, page_size=20, max_page_size=200)
def list_dataset_rows(request, dataset_id: int, number: int, split: Split = Split.TRAIN):
    """The normalized rows of the train or eval split, in stored order. A page holds at most 4 MiB of
    rows: each row after that is given with ``row`` null and its size (``files/train.jsonl`` has it)."""
    return services.split_rows(_version(request, dataset_id, number), split, services.PAGE_BYTES)


@router.get("/datasets/{dataset_id}/versions/{number}/files/{filename}", response={200: None})
def download_dataset_file(request, dataset_id: int, number: int, filename: str):
    """train.jsonl, eval.jsonl or original.jsonl, from a verified local copy."""
    version = _version(request, dataset_id, number)
    if services.version_file_entry(version, filename) is None:
        raise NotFound("No such file in this dataset version.")
    path = services.dataset_files(version).folder / filename
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"{version.dataset.name}-v{version.number}-{filename}",
        content_type="application/jsonl",
    )
