"""The catalogue of models (filtered live with htmx), registering a model, a model's page with its
versions, aliases, lineage and card, and editing a model's description."""

from __future__ import annotations

from urllib.parse import urlencode

from django.db.models import Count, OuterRef, Prefetch, Subquery
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Team
from portfolio.audit.models import AuditEvent
from portfolio.formviews import submit
from portfolio.registry import cards, services
from portfolio.registry.choices import VersionStatus
from portfolio.registry.forms import ModelCreateForm, ModelEditForm, ModelFilterForm
from portfolio.registry.models import Alias, Model, ModelVersion
from portfolio.registry.views.display import decorate
from portfolio.registry.views.lineage_svg import lineage_svg


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
        page = listing.paginate(request, models)
    context = {
        "form": form,
        "page": page,
        "query": listing.query_without(request, "page"),
        "filtered": listing.is_filtered(request),
        "can_register": gate.can(actor, "model.register"),
    }
    return htmx.page_or_fragment(
        request, "registry/model_list.html", "registry/partials/model_results.html", context
    )


@require_http_methods(["GET", "POST"])
def model_create(request):
    """Permission: ``model.register`` in some team (owner or engineer), and in the team chosen: a team
    the actor may not see answers 404, one they may see but not register in 403."""
    actor = actor_of(request)
    gate.require(actor, "model.register")
    if request.method == "POST" and request.POST.get("owner_team"):
        team = gate.get_visible(actor, Team, pk=request.POST["owner_team"])
        gate.require(actor, "model.register", team)
    form = ModelCreateForm(request.POST if request.method == "POST" else None, actor=actor)
    created = submit(
        request,
        form,
        lambda: services.create_model(actor=actor, **form.cleaned_data),
        success=lambda model: f"Model {model.name} registered. Import its first version below.",
        then=lambda model: redirect("model-detail", name=model.name),
    )
    if created is not None:
        return created
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
    page = listing.paginate(request, versions)
    page.object_list = list(page.object_list)
    decorate(page.object_list, aliases_by_version)
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
            "can_force": gate.can(actor, "model.promote_force", model),
            "guarded_aliases": services.GUARDED_ALIASES,
            "audit_url": _audit_url(model, "model.promote") if can_view_audit else "",
            "history_url": _audit_url(model) if can_view_audit else "",
        },
    )


@require_http_methods(["GET", "POST"])
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
    saved = submit(
        request,
        form,
        lambda: services.update_model(actor=actor, model=model, **form.cleaned_data),
        success=lambda _: f"Model {model.name} saved.",
        then=lambda _: redirect("model-detail", name=model.name),
        reload=model,
    )
    if saved is not None:
        return saved
    return render(request, "registry/model_form.html", {"form": form, "model": model})
