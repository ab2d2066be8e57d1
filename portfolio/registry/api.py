"""REST endpoints for the model registry."""

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.utils.http import content_disposition_header
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Team
from portfolio.errors import Invalid, NotFound
from portfolio.registry import (
    aliases,
    artifacts,
    chat_templates,
    derived_versions,
    lineage,
    merging,
    services,
)
from portfolio.registry.choices import Source, Task, VersionStatus, Visibility
from portfolio.registry.models import Model, ModelVersion
from portfolio.registry.storage import CorruptArtifact, check_relative_path
from portfolio.registry.stores import default_store

router = Router(tags=["registry"])


class ModelOut(Schema):
    id: int
    name: str
    task: str
    description: str
    owner_team_id: int
    visibility: str
    tags: list[str]
    license: str
    created_at: datetime
    aliases: dict[str, int] = Field(default_factory=dict, description="alias -> version number")

    @staticmethod
    def resolve_aliases(obj) -> dict[str, int]:
        return {alias.name: alias.version.number for alias in obj.aliases.all()}


class PromotionOut(ModelOut):
    followed: list[str] = Field(
        default_factory=list, description="What the promotion set in motion: rollouts started, or why not"
    )


class ModelIn(Schema):
    name: str = Field(min_length=2, max_length=80)
    owner_team_id: int
    task: Task = Task.CHAT
    description: str = ""
    visibility: Visibility = Visibility.TEAM
    tags: list[str] = []
    license: str = ""


class ModelPatch(Schema):
    task: Task
    description: str = ""
    visibility: Visibility
    tags: list[str] = []
    license: str = ""


class VersionOut(Schema):
    id: int
    model: str = Field(alias="model.name")
    number: int
    kind: str
    base_version_id: int | None
    parent_version_id: int | None
    source: str
    source_ref: str
    status: str
    status_detail: str
    progress: int
    progress_detail: str
    artifact_id: str | None
    format: str
    architecture: str
    parameter_count: int | None
    context_length: int | None
    dtype: str
    quantization: str
    has_chat_template: bool
    family: str
    architecture_facts: dict[str, Any]
    metrics: dict[str, Any]
    health: str | None = None
    created_at: datetime
    ready_at: datetime | None

    @staticmethod
    def resolve_health(obj) -> str | None:
        return obj.artifact.health if obj.artifact_id else None


class VersionDetail(VersionOut):
    model_card: str
    files: list[dict[str, Any]] = []

    @staticmethod
    def resolve_files(obj) -> list[dict[str, Any]]:
        return obj.artifact.files if obj.artifact_id else []


class ImportIn(Schema):
    source: Source = Field(description="hub (org/name@revision), local (server folder) or gguf (server file)")
    ref: str = Field(min_length=1, max_length=500)
    base_version_id: int | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    model_card: str = Field("", max_length=services.MAX_MODEL_CARD_CHARS)
    chat_template: str = Field(
        "",
        max_length=chat_templates.MAX_CHAT_TEMPLATE_BYTES,
        description="A Jinja chat template written into the imported tokenizer (for files without one)",
    )


class ChatTemplateIn(Schema):
    chat_template: str = Field(
        min_length=1,
        max_length=chat_templates.MAX_CHAT_TEMPLATE_BYTES,
        description="A Jinja chat template, as transformers reads it",
    )


class PromoteIn(Schema):
    alias: str = Field(min_length=1, max_length=32)
    force_reason: str = Field(
        "",
        max_length=500,
        description="Owners only: promote to production despite a lower eval score, or none at all where "
        "the current production version has one",
    )
    endpoint: str = Field(
        "",
        max_length=63,
        description="Start a rollout of this version on this endpoint (by default, a production promotion "
        "starts one on every endpoint that served the previous production version)",
    )


class AliasRemoveQuery(Schema):
    reason: str = Field(
        "",
        max_length=aliases.MAX_REASON,
        description="Why it is removed: required for production (owners only), which endpoints follow",
    )


class LineageOut(Schema):
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    versions_not_drawn: int = Field(
        0, description="The model's versions left out: only the newest and the lineage of ?version= are given"
    )


class LineageQuery(Schema):
    version: int | None = Field(None, description="A version number whose lineage is given, however old")


def _model(request, name: str) -> Model:
    return gate.get_visible(request.auth, Model, name=name)


def _version(request, name: str, number: int) -> ModelVersion:
    model = _model(request, name)
    version = model.versions.select_related("model__owner_team", "artifact").filter(number=number).first()
    if version is None:
        raise NotFound("Version not found.")
    return version


@router.get("/models", response=list[ModelOut])
@paginate(PageNumberPagination, page_size=50)
def list_models(request, q: str = "", task: str = "", team_id: int | None = None, alias: str = ""):
    models = gate.visible(request.auth, Model).prefetch_related("aliases__version")
    if q:
        models = models.filter(
            Q(name__icontains=q) | Q(description__icontains=q) | Q(tags__contains=[q.lower()])
        )
    if task:
        models = models.filter(task=task)
    if team_id is not None:
        models = models.filter(owner_team_id=team_id)
    if alias:
        models = models.filter(aliases__name=alias)
    return models.distinct().order_by("name", "id")


@router.post("/models", response={201: ModelOut})
def create_model(request, payload: ModelIn):
    team = gate.get_visible(request.auth, Team, pk=payload.owner_team_id)
    data = payload.dict(exclude={"owner_team_id"})
    return Status(201, services.create_model(actor=request.auth, owner_team=team, **data))


@router.get("/models/{name}", response=ModelOut)
def get_model(request, name: str):
    return _model(request, name)


@router.put("/models/{name}", response=ModelOut)
def update_model(request, name: str, payload: ModelPatch):
    return services.update_model(actor=request.auth, model=_model(request, name), **payload.dict())


@router.get("/models/{name}/versions", response=list[VersionOut])
@paginate(PageNumberPagination, page_size=50)
def list_versions(request, name: str, status: str = ""):
    versions = _model(request, name).versions.select_related("model", "artifact")
    if status:
        versions = versions.filter(status=status)
    return versions.order_by("-number")


@router.get("/models/{name}/versions/{number}", response=VersionDetail)
def get_version(request, name: str, number: int):
    return _version(request, name, number)


@router.post("/models/{name}/imports", response={202: VersionOut})
def start_import(request, name: str, payload: ImportIn):
    """Queue an import; poll the version until its status leaves `importing`."""
    if payload.source == Source.UPLOAD:
        raise Invalid("source: upload adapters with POST /models/{name}/uploads.")
    model = _model(request, name)
    base = (
        ModelVersion.objects.visible_to(request.auth).filter(pk=payload.base_version_id).first()
        if payload.base_version_id
        else None
    )
    if payload.base_version_id and base is None:
        raise Invalid("base_version_id: No such version.")
    version = services.start_import(
        actor=request.auth,
        model=model,
        source=payload.source,
        ref=payload.ref,
        base_version=base,
        allow_pickle=payload.allow_pickle,
        trust_remote_code=payload.trust_remote_code,
        model_card=payload.model_card,
        chat_template=payload.chat_template,
    )
    return Status(202, version)


@router.post("/models/{name}/uploads", response={202: VersionOut})
def upload_adapter(request, name: str, base_version_id: Form[int], file: File[UploadedFile]):
    """Upload a LoRA adapter: a .zip with adapter_config.json and safetensors weights."""
    model = _model(request, name)
    gate.require(request.auth, "model.register", model)
    base = ModelVersion.objects.visible_to(request.auth).filter(pk=base_version_id).first()
    if base is None:  # none, or another team's: alike, so that ids tell nothing
        raise Invalid("base_version_id: No such version.")
    saved = services.save_upload(file.chunks(), file.name or "", team=model.owner_team)
    try:
        version = services.start_import(
            actor=request.auth,
            model=model,
            source=Source.UPLOAD,
            ref=file.name or "",
            base_version=base,
            upload_path=saved,
        )
    except BaseException:
        saved.unlink(missing_ok=True)
        raise
    return Status(202, version)


@router.post("/models/{name}/versions/{number}/promote", response=PromotionOut)
def promote(request, name: str, number: int, payload: PromoteIn):
    version = _version(request, name, number)
    promotion = services.promote(
        actor=request.auth,
        version=version,
        alias=payload.alias,
        force_reason=payload.force_reason,
        endpoint=payload.endpoint,
    )
    model = version.model
    model.followed = promotion.followed
    return model


@router.delete("/models/{name}/aliases/{alias}", response=ModelOut)
def remove_alias(request, name: str, alias: str, query: Query[AliasRemoveQuery]):
    """Remove an alias from the model (a version holding one cannot be archived); answers the model with the
    aliases left. An alias the model does not have: 404."""
    model = _model(request, name)
    aliases.remove_alias(actor=request.auth, model=model, alias=alias, reason=query.reason)
    return model


@router.post("/models/{name}/versions/{number}/chat-template", response={201: VersionOut})
def set_chat_template(request, name: str, number: int, payload: ChatTemplateIn):
    """Give a version a chat template: a new version with the same weights and this template in its
    tokenizer, derived from this one. Chat calls are refused for versions without a template."""
    version = _version(request, name, number)
    return Status(
        201,
        derived_versions.set_chat_template(
            actor=request.auth, version=version, chat_template=payload.chat_template
        ),
    )


class MergeOut(Schema):
    id: int = Field(description="The merge job: GET /api/v1/training/merges/{id} follows it")
    status: str
    message: str


@router.post("/models/{name}/versions/{number}/merge", response={202: MergeOut})
def merge(request, name: str, number: int):
    """Merge an adapter into its base: a new full version of the adapter's model, served without LoRA."""
    return Status(202, merging.request_merge(actor=request.auth, version=_version(request, name, number)))


@router.post("/models/{name}/versions/{number}/archive", response=VersionOut)
def archive(request, name: str, number: int):
    return services.archive_version(actor=request.auth, version=_version(request, name, number))


@router.post("/models/{name}/versions/{number}/purge", response=VersionOut)
def purge(request, name: str, number: int):
    """Delete an archived version's stored files (no longer billed); files another version holds stay."""
    return services.purge_version(actor=request.auth, version=_version(request, name, number))


@router.get("/models/{name}/versions/{number}/files/{path:path}", response={200: None, 302: None})
def download_file(request, name: str, number: int, path: str):
    """One file of a version, streamed and verified; or a short-lived presigned URL where an operator published
    the object store for browsers (``PORTFOLIO_MINIO_PUBLIC_URL``): its own address is the platform's alone."""
    # Whoever may see the version may read its files (``_version`` looks it up among what the caller sees):
    # a model shared with a department or the organisation is its other teams' to deploy and fine-tune.
    version = _version(request, name, number)
    if version.artifact is None or version.status not in (VersionStatus.READY, VersionStatus.ARCHIVED):
        raise NotFound("This version has no stored files.")
    try:
        entry = version.artifact.manifest().get(check_relative_path(path))
    except ValueError:
        entry = None
    if entry is None:
        raise NotFound("No such file in this version.")
    # An attachment of no renderable type, its name quoted (a file's name may hold '"', ';' or any letter):
    # a model's README.md carrying HTML would otherwise open as a page, here in the reader's session.
    # FileResponse sets these only for a file object, which it would read past the reader's check.
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition_header(True, entry.path.rsplit("/", 1)[-1]),
    }
    store = default_store()
    if url := store.download_url(entry.sha256, headers, timedelta(minutes=15), public=True):
        return HttpResponseRedirect(url)
    return StreamingHttpResponse(_VerifiedReader(store, entry, version.artifact_id), headers=headers)


class _VerifiedReader:
    """Streams a stored file to the client; a mismatch aborts the response and marks the artifact."""

    def __init__(self, store, entry, artifact_id: str):
        self.store, self.entry, self.artifact_id = store, entry, artifact_id

    def __iter__(self):
        import hashlib

        digest, size = hashlib.sha256(), 0
        with self.store.open_blob(self.entry.sha256) as source:
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        if digest.hexdigest() != self.entry.sha256 or size != self.entry.size:
            artifacts.mark_artifact_health(self.artifact_id, [f"{self.entry.path}: sha256 mismatch"])
            raise CorruptArtifact(self.entry.path, "sha256 mismatch while downloading")


@router.post("/models/{name}/versions/{number}/verify", response=VersionOut)
def verify_version(request, name: str, number: int):
    """Re-hash every stored file now; a corrupted file marks the version unhealthy with its path."""
    version = _version(request, name, number)
    gate.require(request.auth, "model.register", version.model)
    if version.artifact is None:
        raise Invalid("This version has no stored files yet.")
    artifacts.verify_on_request(version.artifact_id, actor=request.auth)
    version.artifact.refresh_from_db()
    return version


@router.get("/models/{name}/lineage", response=LineageOut)
def get_lineage(request, name: str, query: Query[LineageQuery]):
    model = _model(request, name)
    focus = None if query.version is None else _version(request, name, query.version)
    graph = lineage.bounded_graph(model, gate.visible(request.auth, ModelVersion), focus=focus)
    return {
        "nodes": [n.__dict__ for n in graph.nodes],
        "edges": [e.__dict__ for e in graph.edges],
        "versions_not_drawn": graph.not_drawn,
    }


class CompareQuery(Schema):
    a: int
    b: int


@router.get("/models/{name}/compare", response=dict[str, Any])
def compare(request, name: str, query: Query[CompareQuery]):
    """Two versions side by side: metadata and metrics."""
    left, right = _version(request, name, query.a), _version(request, name, query.b)
    fields = [
        "kind",
        "source",
        "source_ref",
        "status",
        "format",
        "architecture",
        "parameter_count",
        "context_length",
        "dtype",
        "quantization",
        "has_chat_template",
        "artifact_id",
    ]
    return {
        "a": query.a,
        "b": query.b,
        "fields": {f: [getattr(left, f), getattr(right, f)] for f in fields},
        "metrics": {
            k: [left.metrics.get(k), right.metrics.get(k)]
            for k in sorted(set(left.metrics) | set(right.metrics))
        },
    }
