"""A version's page (files, lineage, metrics, card, aliases), its import progress, and its buttons:
promote to an alias, archive, delete an archived version's stored files, verify the stored files, give it a
chat template (as a new version), merge an adapter into a full version."""

from __future__ import annotations

import contextlib
import json

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from portfolio import buttons, htmx
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, NotFound
from portfolio.formviews import submit
from portfolio.registry import artifacts, cards, derived_versions, merging, services
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.forms import SUGGESTED_ALIASES, ChatTemplateForm, PromoteForm
from portfolio.registry.models import Model, ModelVersion
from portfolio.registry.views.display import decorate
from portfolio.registry.views.lineage_svg import lineage_svg


def visible_version(actor: Actor, name: str, number: int) -> ModelVersion:
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


def visible_or_none(actor: Actor, version: ModelVersion | None) -> ModelVersion | None:
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
    request,
    actor: Actor,
    version: ModelVersion,
    *,
    promote_form=None,
    moving=None,
    template_form=None,
    status=200,
):
    model = version.model
    visible_versions = gate.visible(actor, ModelVersion).select_related("model")
    aliases = list(model.aliases.select_related("version", "updated_by").order_by("name"))
    artifact = version.artifact
    files = []
    if artifact is not None:
        downloadable = version.status in (VersionStatus.READY, VersionStatus.ARCHIVED)
        for entry in sorted(artifact.files, key=lambda f: f["path"]):
            href = ""
            # A path stored before control characters were refused (storage.check_relative_path) has no
            # URL: listed without a link rather than the page failing.
            with contextlib.suppress(NoReverseMatch):
                href = downloadable and reverse(
                    "api:download_file",
                    kwargs={"name": model.name, "number": version.number, "path": entry["path"]},
                )
            files.append({**entry, "href": href or ""})
    decorate([version])
    version.alias_names = [alias.name for alias in aliases if alias.version_id == version.pk]
    held = {alias.name: alias for alias in aliases}
    suggestions = [(name, held.get(name)) for name in SUGGESTED_ALIASES]
    suggestions += [(alias.name, alias) for alias in aliases if alias.name not in SUGGESTED_ALIASES]
    return render(
        request,
        "registry/version_detail.html",
        {
            "model": model,
            "version": version,
            "artifact": artifact,
            "files": files,
            "base": visible_or_none(actor, version.base_version),
            "parent": visible_or_none(actor, version.parent_version),
            # At most LISTED of each (an organisation-wide base can carry hundreds), and how many there are.
            "adapters": _listed(visible_versions.filter(base_version=version)),
            "derived": _listed(visible_versions.filter(parent_version=version)),
            "lineage": lineage_svg(model, actor, current=version),
            "metrics": _metric_rows(version.metrics or {}),
            # Sanitised by cards.render (raw HTML is never rendered; nh3 cleans the result again).
            "card_html": mark_safe(cards.render(version.model_card)) if version.model_card else "",  # noqa: S308
            "aliases": aliases,
            "alias_suggestions": suggestions,
            "promote_form": promote_form or PromoteForm(),
            "template_form": template_form or ChatTemplateForm(),
            "moving": moving,
            "can_register": gate.can(actor, "model.register", model),
            "can_promote": gate.can(actor, "model.promote", model),
            "can_force": gate.can(actor, "model.promote_force", model),
            "guarded_aliases": services.GUARDED_ALIASES,
            # The number a derived version (a new chat template) would get, for the button's label.
            "next_number": (model.versions.order_by("-number").values_list("number", flat=True).first() or 0)
            + 1,
            "is_importing": version.status == VersionStatus.IMPORTING,
            "purged": _purged(version) if artifact is None else None,
            "merge_notes": merging.merge_notes(version) if version.kind == VersionKind.ADAPTER else [],
        },
        status=status,
    )


@require_GET
def version_detail(request, name: str, number: int):
    """Permission: the model is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    return _version_page(request, actor, visible_version(actor, name, number))


@require_GET
def version_progress(request, name: str, number: int):
    """Permission: the model is visible, else 404. The progress bar polls itself while the import runs;
    once it has ended the fragment comes back without its trigger and htmx reloads the page."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
    response = htmx.render(
        request, "registry/partials/progress.html", {"model": version.model, "version": version}
    )
    if version.status != VersionStatus.IMPORTING and wants_fragment(request):
        response["HX-Refresh"] = "true"  # the final state (files, metrics, card) is on the whole page
    return response


@require_POST
def version_promote(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.promote`` (owner or engineer, else 403). Moving an alias
    away from another version asks for a confirmation first."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
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
        was = f" (it pointed to v{holder.version.number})" if holder else ""
        promoted = submit(
            request,
            form,
            lambda: services.promote(
                actor=actor,
                version=version,
                alias=alias,
                force_reason=form.cleaned_data.get("force_reason", ""),
                endpoint=form.cleaned_data.get("endpoint", ""),
            ),
            success=lambda done: " ".join([f"{alias} now points to {version.label}{was}.", *done.followed]),
            then=lambda _: redirect("version-detail", name=version.model.name, number=version.number),
        )
        if promoted is not None:
            return promoted
    return _version_page(request, actor, version, promote_form=form)


@require_POST
def version_chat_template(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (owner or engineer, else 403). A template that
    does not compile is shown on the form; a good one makes a new version, whose page comes next."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    form = ChatTemplateForm(request.POST)
    made = submit(
        request,
        form,
        lambda: derived_versions.set_chat_template(
            actor=actor, version=version, chat_template=form.cleaned_data["chat_template"]
        ),
        success=lambda derived: (
            f"{derived.label} has the same weights as {version.label} and your chat template. "
            "Deploy or promote it to use it."
        ),
        then=lambda derived: redirect("version-detail", name=derived.model.name, number=derived.number),
    )
    if made is not None:
        return made
    return _version_page(request, actor, version, template_form=form, status=400)


@require_POST
def version_archive(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (else 403). A version still in use is
    refused with the reasons (``Conflict``), shown as a message."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    return buttons.press(
        request,
        lambda: services.archive_version(actor=actor, version=version),
        success=f"{version.label} archived: it can no longer be promoted or deployed.",
        back=reverse("version-detail", kwargs={"name": version.model.name, "number": version.number}),
    )


@require_POST
def version_purge(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (else 403), as archiving. A version that is not
    archived, or is in use again, is refused with the reason (``Conflict``), shown as a message."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    return buttons.press(
        request,
        lambda: services.purge_version(actor=actor, version=version),
        success=f"{version.label}'s stored files were deleted: it is no longer billed for storage.",
        back=reverse("version-detail", kwargs={"name": version.model.name, "number": version.number}),
    )


def _purged(version: ModelVersion) -> AuditEvent | None:
    """The audit row of the deletion of the version's files (when and by whom), if they were deleted: part
    of the history of a version the viewer may see, as the model page's previous alias holders."""
    return (
        AuditEvent.objects.filter(
            action="model_version.purge",
            object_type=ModelVersion._meta.label_lower,
            object_id=str(version.pk),
        )
        .order_by("-sequence")
        .first()
    )


@require_POST
def version_verify(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (else 403). Re-hashes every stored file now,
    in this request, and records the artifact's health."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    if version.artifact_id is None:
        messages.error(request, f"{version.label} has no stored files yet.")
    else:
        try:
            problems = artifacts.verify_on_request(version.artifact_id, actor=actor)
        except Conflict as exc:
            messages.error(request, exc.message)
            return redirect("version-detail", name=version.model.name, number=version.number)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            messages.error(request, f"{len(problems)} file(s) do not match their checksums: {shown}.")
        else:
            count = version.artifact.file_count
            messages.success(
                request, f"All {count} file{'s' if count != 1 else ''} match their sha256 checksums."
            )
    return redirect("version-detail", name=version.model.name, number=version.number)


@require_POST
def version_merge(request, name: str, number: int):
    """Permission: visible (else 404) and ``model.register`` (owner or engineer, else 403). Starts merging
    the adapter into a full version (training's job, through ``merging.ADAPTER_MERGERS``); a version that
    is not a ready adapter, or one already merging, is refused with the reason."""
    actor = actor_of(request)
    version = visible_version(actor, name, number)
    gate.require(actor, "model.register", version.model)
    return buttons.press(
        request,
        lambda: merging.request_merge(actor=actor, version=version),
        success=lambda started: started.message,
        back=reverse("version-detail", kwargs={"name": version.model.name, "number": version.number}),
    )


LISTED = 50


def _listed(versions) -> dict:
    """The first LISTED of ``versions`` by model and number, and how many there are in all."""
    shown = list(versions.select_related("model").order_by("model__name", "number")[:LISTED])
    return {"shown": shown, "total": versions.count() if len(shown) == LISTED else len(shown)}
