"""Web pages of the model registry: the catalogue, a model with its versions and lineage, imports and
adapter uploads with live progress, a version's files, promotion, verification, archiving, comparison.

Every view decides access with the gate: a model the actor may not see answers 404 (``gate.get_visible``),
a change needs its capability (``gate.require``), else 403; the docstrings say which. Changes go through
``registry.services``; a ``DomainError`` becomes a form error or a message, while ``NotFound`` and
``Forbidden`` propagate to Django's 404 and 403 pages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Prefetch, Subquery
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.models import Team
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, DomainError, Invalid, NotFound
from portfolio.registry import cards, lineage, services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.forms import (
    SUGGESTED_ALIASES,
    AdapterUploadForm,
    CompareForm,
    ImportForm,
    ModelCreateForm,
    ModelEditForm,
    ModelFilterForm,
    PromoteForm,
    apply_registry_error,
)
from portfolio.registry.models import Alias, Model, ModelVersion

PAGE_SIZE = 50
GET_POST = require_http_methods(["GET", "POST"])


# --- Helpers ---------------------------------------------------------------------------------------
def human_count(n: int | None) -> str:
    """134515008 -> "134.5M": parameter counts as people quote them."""
    if not n:
        return "—"
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= factor * 0.9995:  # 999,960 is "1.0M", not "1000.0K"
            return f"{n / factor:.1f}{suffix}"
    return str(n)


def _query_without(request, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def _version(actor: Actor, name: str, number: int) -> ModelVersion:
    """A version of a visible model, else 404 (the model's visibility decides the version's)."""
    model = gate.get_visible(actor, Model, name=name)
    version = (
        model.versions.select_related(
            "artifact", "created_by", "base_version__model", "parent_version__model"
        )
        .filter(number=number)
        .first()
    )
    if version is None:
        raise NotFound("Version not found.")
    version.model = model
    return version


def short_ref(version: ModelVersion) -> str:
    """The telling end of a source reference: a server path's last part, a hub reference whole."""
    ref = version.source_ref
    if version.source in (Source.LOCAL, Source.GGUF) and "/" in ref.rstrip("/"):
        return "…/" + ref.rstrip("/").rsplit("/", 1)[1]
    return ref if len(ref) <= 40 else ref[:39] + "…"


def _decorate(versions, aliases_by_version: dict[int, list[str]] | None = None) -> None:
    for version in versions:
        version.params_label = human_count(version.parameter_count)
        version.params_exact = f"{version.parameter_count:,}" if version.parameter_count else "—"
        version.ref_label = short_ref(version)
        version.alias_names = (aliases_by_version or {}).get(version.pk, [])


def _previous_holders(model: Model) -> dict[str, str | None]:
    """alias -> the version that held it before its latest move, as recorded by ``services.promote``.

    Read from the model's own audit rows (the ``before`` of its last ``model.promote`` per alias): it
    is part of the history of a model the viewer may see, not the audit log itself, which stays
    behind ``audit.view``.
    """
    previous: dict[str, str | None] = {}
    events = (
        AuditEvent.objects.filter(
            action="model.promote", object_type=Model._meta.label_lower, object_id=str(model.pk)
        )
        .order_by("-sequence")
        .values_list("before", flat=True)[:500]
    )
    for before in events:
        alias = (before or {}).get("alias")
        if alias and alias not in previous:
            previous[alias] = before.get("version")
    return previous


def _audit_url(model: Model, action: str = "") -> str:
    query = {"object_type": Model._meta.label_lower, "object_id": model.pk}
    if action:
        query["action"] = action
    return f"{reverse('audit-log')}?{urlencode(query)}"


# --- Lineage as inline SVG -------------------------------------------------------------------------
NODE_HEIGHT = 46
COLUMN_GAP = 84
ROW_STEP = 66
MARGIN = 12
MAX_LABEL = 32


@dataclass(frozen=True)
class SvgNode:
    x: int
    y: int
    width: int
    label: str
    full_label: str
    caption: str
    status: str
    href: str
    current: bool


@dataclass(frozen=True)
class SvgEdge:
    path: str
    label: str
    label_x: int
    label_y: int
    text: str


def lineage_svg(model: Model, actor: Actor, current: ModelVersion | None = None) -> dict | None:
    """The model's lineage laid out for the ``registry/includes/lineage.html`` SVG: bases on the left,
    adapters and derived versions to their right; every node links to its version page."""
    nodes, edges = lineage.graph_for(model, gate.visible(actor, ModelVersion))
    if not nodes:
        return None
    # Rows in creation order (graph_for sorts its ids as strings, which puts v10 before v2).
    nodes = sorted(nodes, key=lambda node: int(node.id[1:]))
    positions = lineage.layout(nodes, edges)
    pks = {int(node.id[1:]) for node in nodes}
    numbers = {
        f"v{row['pk']}": (row["model__name"], row["number"])
        for row in ModelVersion.objects.filter(pk__in=pks).values("pk", "number", "model__name")
    }
    longest = max(min(len(node.label), MAX_LABEL) for node in nodes)
    width = max(150, 8 * longest + 40)  # 13px bold: about 8px a character
    boxes: dict[str, SvgNode] = {}
    for node in nodes:
        column, row = positions[node.id]
        model_name, number = numbers[node.id]
        label = node.label if len(node.label) <= MAX_LABEL else node.label[: MAX_LABEL - 1] + "…"
        boxes[node.id] = SvgNode(
            x=MARGIN + column * (width + COLUMN_GAP),
            y=MARGIN + row * ROW_STEP,
            width=width,
            label=label,
            full_label=node.label,
            caption=f"{'adapter' if node.kind == 'adapter' else 'base'} · {node.status}",
            status=node.status,
            href=reverse("version-detail", kwargs={"name": model_name, "number": number}),
            current=current is not None and node.id == f"v{current.pk}",
        )
    lines = []
    for edge in edges:
        source, target = boxes[edge.source], boxes[edge.target]
        y1, y2 = source.y + NODE_HEIGHT // 2, target.y + NODE_HEIGHT // 2
        if target.x + target.width < source.x:
            # The usual case: from the dependent's left side back to its base on the left.
            x1, x2 = source.x, target.x + target.width
            bend = (x1 - x2) // 2
            path = f"M{x1},{y1} C{x1 - bend},{y1} {x2 + bend},{y2} {x2 + 6},{y2}"
            label_x, label_y = (x1 + x2) // 2, (y1 + y2) // 2 - 6
        else:
            # Same column (a version derived from a sibling): a loop on the right side.
            x1, x2 = source.x + source.width, target.x + target.width
            reach = max(x1, x2) + 40
            path = f"M{x1},{y1} C{reach},{y1} {reach},{y2} {x2 + 6},{y2}"
            label_x, label_y = reach - 4, (y1 + y2) // 2
        lines.append(
            SvgEdge(
                path=path,
                label=edge.relation,
                label_x=label_x,
                label_y=label_y,
                text=f"{source.full_label} is {edge.relation} {target.full_label}",
            )
        )
    columns = max(column for column, _ in positions.values()) + 1
    rows = max(row for _, row in positions.values()) + 1
    return {
        "nodes": list(boxes.values()),
        "edges": lines,
        "width": 2 * MARGIN + columns * width + (columns - 1) * COLUMN_GAP + 48,
        "height": 2 * MARGIN + (rows - 1) * ROW_STEP + NODE_HEIGHT,
        "node_height": NODE_HEIGHT,
    }


# --- The catalogue ---------------------------------------------------------------------------------
@require_GET
def model_list(request):
    """Permission: any signed-in user; ``gate.visible`` lists only the models they may see.
    htmx gets the results fragment (live filtering)."""
    actor = actor_of(request)
    visible = gate.visible(actor, Model)
    form = ModelFilterForm(request.GET, visible_models=visible)
    page = None
    if form.is_valid():
        versions = ModelVersion.objects.filter(model=OuterRef("pk")).order_by("-number")
        models = (
            form.apply(visible)
            .distinct()
            .select_related("owner_team")
            .prefetch_related(
                Prefetch("aliases", queryset=Alias.objects.select_related("version").order_by("name"))
            )
            .annotate(
                latest_number=Subquery(versions.values("number")[:1]),
                latest_status=Subquery(versions.values("status")[:1]),
                version_count=Subquery(
                    ModelVersion.objects.filter(model=OuterRef("pk"))
                    .order_by()
                    .values("model")
                    .annotate(n=Count("pk"))
                    .values("n")
                ),
            )
            .order_by("name", "id")
        )
        page = Paginator(models, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "query": _query_without(request, "page"),
        "filtered": any(value for key, value in request.GET.items() if key != "page"),
        "can_register": gate.can(actor, "model.register"),
    }
    template = (
        "registry/partials/model_results.html" if wants_fragment(request) else "registry/model_list.html"
    )
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@GET_POST
def model_create(request):
    """Permission: ``model.register`` in some team (owner or engineer), and in the team chosen: a team
    the actor may not see answers 404, one they may see but not register in 403."""
    actor = actor_of(request)
    gate.require(actor, "model.register")
    if request.method == "POST" and request.POST.get("owner_team"):
        team = gate.get_visible(actor, Team, pk=request.POST["owner_team"])
        gate.require(actor, "model.register", team)
    form = ModelCreateForm(request.POST if request.method == "POST" else None, actor=actor)
    if form.is_valid():
        try:
            model = services.create_model(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_registry_error(form, exc)
        else:
            messages.success(request, f"Model {model.name} registered. Import its first version below.")
            return redirect("model-detail", name=model.name)
    return render(request, "registry/model_form.html", {"form": form, "model": None})


@require_GET
def model_detail(request, name: str):
    """Permission: the model is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    aliases = list(model.aliases.select_related("version", "updated_by").order_by("name"))
    aliases_by_version: dict[int, list[str]] = {}
    for alias in aliases:
        aliases_by_version.setdefault(alias.version_id, []).append(alias.name)
    previous = _previous_holders(model) if aliases else {}
    for alias in aliases:
        alias.previous_label = previous.get(alias.name)
    versions = model.versions.select_related("artifact").order_by("-number")
    page = Paginator(versions, PAGE_SIZE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    _decorate(page.object_list, aliases_by_version)
    card_version = model.versions.filter(status=VersionStatus.READY).order_by("-number").first()
    can_view_audit = gate.can(actor, "audit.view")
    return render(
        request,
        "registry/model_detail.html",
        {
            "model": model,
            "aliases": aliases,
            "page": page,
            "lineage": lineage_svg(model, actor),
            "card_version": card_version,
            # Sanitised by cards.render (raw HTML is never rendered; nh3 cleans the result again).
            "card_html": mark_safe(cards.render(card_version.model_card)) if card_version else "",  # noqa: S308
            "can_register": gate.can(actor, "model.register", model),
            "can_promote": gate.can(actor, "model.promote", model),
            "audit_url": _audit_url(model, "model.promote") if can_view_audit else "",
            "history_url": _audit_url(model) if can_view_audit else "",
        },
    )


@GET_POST
def model_edit(request, name: str):
    """Permission: visible (else 404) and ``model.register`` (owner or engineer of its team, else 403)."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    gate.require(actor, "model.register", model)
    initial = {
        "task": model.task,
        "visibility": model.visibility,
        "tags": ", ".join(model.tags),
        "license": model.license,
        "description": model.description,
    }
    form = ModelEditForm(request.POST if request.method == "POST" else None, initial=initial)
    if form.is_valid():
        try:
            services.update_model(actor=actor, model=model, **form.cleaned_data)
        except DomainError as exc:
            apply_registry_error(form, exc)
            model.refresh_from_db()
        else:
            messages.success(request, f"Model {model.name} saved.")
            return redirect("model-detail", name=model.name)
    return render(request, "registry/model_form.html", {"form": form, "model": model})


# --- Imports and uploads ---------------------------------------------------------------------------
@GET_POST
def model_import(request, name: str):
    """Permission: visible (else 404) and ``model.register`` (else 403). Lifting the pickle and remote
    code checks is offered to platform admins only (``services.start_import`` refuses it to others)."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    gate.require(actor, "model.register", model)
    if request.method == "POST":
        form = ImportForm(request.POST, actor=actor)
    else:
        form = ImportForm(actor=actor, initial={"base_version": request.GET.get("base")})
    if form.is_valid():
        data = form.cleaned_data
        try:
            version = services.start_import(
                actor=actor,
                model=model,
                source=data["source"],
                ref=data["ref"],
                base_version=data["base_version"],
                allow_pickle=data.get("allow_pickle", False),
                trust_remote_code=data.get("trust_remote_code", False),
            )
        except DomainError as exc:
            apply_registry_error(form, exc, {"path": "ref"})
        else:
            messages.success(request, f"Import of {version.label} queued; this page follows its progress.")
            return redirect("version-detail", name=model.name, number=version.number)
    return render(
        request,
        "registry/import_form.html",
        {"form": form, "model": model, "import_roots": _import_roots()},
    )


def _import_roots() -> list[str]:
    return [str(root) for root in settings.IMPORT_ROOTS]


@GET_POST
def adapter_upload(request, name: str):
    """Permission: visible (else 404) and ``model.register`` (else 403), checked before the upload is
    stored. The archive is streamed to disk, then imported like any other source."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    gate.require(actor, "model.register", model)
    if request.method == "POST":
        form = AdapterUploadForm(request.POST, request.FILES, actor=actor)
    else:
        form = AdapterUploadForm(actor=actor, initial={"base_version": request.GET.get("base")})
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            saved = services.save_upload(upload.chunks(), upload.name)
            try:
                version = services.start_import(
                    actor=actor,
                    model=model,
                    source=Source.UPLOAD,
                    ref=upload.name,
                    base_version=form.cleaned_data["base_version"],
                    upload_path=saved,
                )
            except BaseException:
                saved.unlink(missing_ok=True)  # nothing refers to it: do not leave it behind
                raise
        except DomainError as exc:
            apply_registry_error(form, exc)
        else:
            messages.success(request, f"Adapter uploaded; importing it as {version.label}.")
            return redirect("version-detail", name=model.name, number=version.number)
    return render(request, "registry/upload_form.html", {"form": form, "model": model})


# --- Versions --------------------------------------------------------------------------------------
def _visible_or_none(actor: Actor, version: ModelVersion | None) -> ModelVersion | None:
    """A related version (a base in another team's model, say) only if the actor may see it."""
    if version is None or not gate.visible(actor, ModelVersion).filter(pk=version.pk).exists():
        return None
    return version


def _metric_rows(metrics: dict) -> list[tuple[str, str, bool]]:
    """(name, value, is_structured) for the metrics table; nested values shown as JSON."""
    rows = []
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, dict | list):
            rows.append((key, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False), True))
        else:
            rows.append((key, "—" if value is None else str(value), False))
    return rows


def _version_page(
    request, actor: Actor, version: ModelVersion, *, promote_form=None, moving=None, status=200
):
    model = version.model
    visible_versions = gate.visible(actor, ModelVersion).select_related("model")
    aliases = list(model.aliases.select_related("version", "updated_by").order_by("name"))
    artifact = version.artifact
    files = []
    if artifact is not None:
        downloadable = version.status in (VersionStatus.READY, VersionStatus.ARCHIVED)
        for entry in sorted(artifact.files, key=lambda f: f["path"]):
            href = (
                reverse(
                    "api:download_file",
                    kwargs={"name": model.name, "number": version.number, "path": entry["path"]},
                )
                if downloadable
                else ""
            )
            files.append({**entry, "href": href})
    _decorate([version])
    version.alias_names = [alias.name for alias in aliases if alias.version_id == version.pk]
    held = {alias.name: alias for alias in aliases}
    suggestions = [(name, held.get(name)) for name in SUGGESTED_ALIASES]
    suggestions += [(alias.name, alias) for alias in aliases if alias.name not in SUGGESTED_ALIASES]
    response = render(
        request,
        "registry/version_detail.html",
        {
            "model": model,
            "version": version,
            "artifact": artifact,
            "files": files,
            "base": _visible_or_none(actor, version.base_version),
            "parent": _visible_or_none(actor, version.parent_version),
            "adapters": list(visible_versions.filter(base_version=version).order_by("model__name", "number")),
            "derived": list(
                visible_versions.filter(parent_version=version).order_by("model__name", "number")
            ),
            "lineage": lineage_svg(model, actor, current=version),
            "metrics": _metric_rows(version.metrics or {}),
            # Sanitised by cards.render (raw HTML is never rendered; nh3 cleans the result again).
            "card_html": mark_safe(cards.render(version.model_card)) if version.model_card else "",  # noqa: S308
            "aliases": aliases,
            "alias_suggestions": suggestions,
            "promote_form": promote_form or PromoteForm(),
            "moving": moving,
            "can_register": gate.can(actor, "model.register", model),
            "can_promote": gate.can(actor, "model.promote", model),
            "is_importing": version.status == VersionStatus.IMPORTING,
        },
        status=status,
    )
    return response


@require_GET
def version_detail(request, name: str, number: int):
    """Permission: the model is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    return _version_page(request, actor, _version(actor, name, number))


@require_GET
def version_progress(request, name: str, number: int):
    """Permission: the model is visible, else 404. The progress bar polls itself while the import runs;
    once it has ended the fragment comes back without its trigger and htmx reloads the page."""
    actor = actor_of(request)
    version = _version(actor, name, number)
    importing = version.status == VersionStatus.IMPORTING
    response = render(
        request, "registry/partials/progress.html", {"model": version.model, "version": version}
    )
    if not importing and wants_fragment(request):
        response["HX-Refresh"] = "true"  # the final state (files, metrics, card) is on the whole page
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_POST
def version_promote(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.promote`` (owner or engineer, else 403). Moving an alias
    away from another version asks for a confirmation first."""
    actor = actor_of(request)
    version = _version(actor, name, number)
    gate.require(actor, "model.promote", version.model)
    form = PromoteForm(request.POST)
    if form.is_valid():
        alias = form.cleaned_data["alias"]
        holder = version.model.aliases.select_related("version").filter(name=alias).first()
        if holder is not None and holder.version_id == version.pk:
            messages.info(request, f"{alias} already points to {version.label}.")
            return redirect("version-detail", name=version.model.name, number=version.number)
        if holder is not None and not form.cleaned_data["confirm"]:
            return _version_page(request, actor, version, promote_form=form, moving=holder)
        try:
            services.promote(actor=actor, version=version, alias=alias,
                             force_reason=form.cleaned_data.get("force_reason", ""))
        except DomainError as exc:
            apply_registry_error(form, exc)
        else:
            was = f" (it pointed to v{holder.version.number})" if holder else ""
            messages.success(request, f"{alias} now points to {version.label}{was}.")
            return redirect("version-detail", name=version.model.name, number=version.number)
    return _version_page(request, actor, version, promote_form=form)


@require_POST
def version_archive(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (else 403). A version still in use is
    refused with the reasons (``Conflict``), shown as a message."""
    actor = actor_of(request)
    version = _version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    try:
        services.archive_version(actor=actor, version=version)
    except (Invalid, Conflict) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{version.label} archived: it can no longer be promoted or deployed.")
    return redirect("version-detail", name=version.model.name, number=version.number)


@require_POST
def version_verify(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (else 403). Re-hashes every stored file now,
    in this request, and records the artifact's health."""
    from portfolio.registry.tasks import verify_artifact

    actor = actor_of(request)
    version = _version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    if version.artifact_id is None:
        messages.error(request, f"{version.label} has no stored files yet.")
    else:
        problems = verify_artifact(version.artifact_id)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            messages.error(request, f"{len(problems)} file(s) do not match their checksums: {shown}.")
        else:
            count = version.artifact.file_count
            messages.success(
                request, f"All {count} file{'s' if count != 1 else ''} match their sha256 checksums."
            )
    return redirect("version-detail", name=version.model.name, number=version.number)


# --- Comparison ------------------------------------------------------------------------------------
COMPARED_FIELDS = [
    ("Kind", lambda v: v.get_kind_display()),
    ("Status", lambda v: v.get_status_display()),
    ("Source", lambda v: v.get_source_display()),
    ("Reference", lambda v: v.source_ref or "—"),
    ("Base version", lambda v: v.base_version.label if v.base_version_id else "—"),
    ("Format", lambda v: v.format or "—"),
    ("Architecture", lambda v: v.architecture or "—"),
    ("Parameters", lambda v: _params(v.parameter_count)),
    ("Context length", lambda v: f"{v.context_length:,}" if v.context_length else "—"),
    ("Data type", lambda v: v.dtype or "—"),
    ("Quantization", lambda v: v.quantization or "none"),
    ("Chat template", lambda v: "yes" if v.has_chat_template else "no"),
    ("Artifact", lambda v: v.artifact_id or "—"),
    ("Size", lambda v: v.artifact.size_bytes if v.artifact_id else None),
    ("Files", lambda v: str(v.artifact.file_count) if v.artifact_id else "—"),
    ("Health", lambda v: v.artifact.get_health_display() if v.artifact_id else "—"),
    ("Created", lambda v: v.created_at.strftime("%Y-%m-%d %H:%M")),
]


def _params(count: int | None) -> str:
    if not count:
        return "—"
    return f"{human_count(count)} ({count:,})" if count >= 1000 else str(count)


def _delta(left, right) -> str:
    """B minus A for two numeric metrics ("+0.032"), else nothing."""
    numbers = [v for v in (left, right) if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != 2 or left == right:
        return ""
    return f"{right - left:+.4g}"


def _display(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


@require_GET
def model_compare(request, name: str):
    """Permission: the model is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    if "a" in request.GET or "b" in request.GET:
        form = CompareForm(request.GET, model=model)
    else:
        # Nothing chosen yet: the two newest ready versions (else the two newest), "what changed?".
        newest = model.versions.order_by("-number").values_list("number", flat=True)
        numbers = list(newest.filter(status=VersionStatus.READY)[:2])
        numbers = numbers if len(numbers) == 2 else list(newest[:2])
        form = CompareForm({"a": numbers[-1], "b": numbers[0]} if numbers else None, model=model)
    rows, metric_rows, pair = [], [], None
    if form.is_bound and form.is_valid():
        pair = (
            _version(actor, name, form.cleaned_data["a"]),
            _version(actor, name, form.cleaned_data["b"]),
        )
        for label, read in COMPARED_FIELDS:
            left, right = read(pair[0]), read(pair[1])
            rows.append(
                {"label": label, "a": left, "b": right, "differs": left != right, "size": label == "Size"}
            )
        keys = sorted(set(pair[0].metrics or {}) | set(pair[1].metrics or {}))
        for key in keys:
            left, right = (pair[0].metrics or {}).get(key), (pair[1].metrics or {}).get(key)
            metric_rows.append(
                {
                    "label": key,
                    "a": _display(left),
                    "b": _display(right),
                    "differs": left != right,
                    "delta": _delta(left, right),
                }
            )
    return render(
        request,
        "registry/compare.html",
        {
            "model": model,
            "form": form,
            "pair": pair,
            "rows": rows,
            "metric_rows": metric_rows,
            "differences": sum(row["differs"] for row in rows + metric_rows),
        },
    )
