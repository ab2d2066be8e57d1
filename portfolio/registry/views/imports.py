"""Importing a version (from the hub mirror, a server folder or a GGUF file) and uploading an adapter
archive; either way the version's page then follows the import's progress."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.formviews import submit
from portfolio.registry import services
from portfolio.registry.choices import Source
from portfolio.registry.forms import AdapterUploadForm, ImportForm
from portfolio.registry.models import Model, ModelVersion


@require_http_methods(["GET", "POST"])
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

    def start_import() -> ModelVersion:
        data = form.cleaned_data
        return services.start_import(
            actor=actor,
            model=model,
            source=data["source"],
            ref=data["ref"],
            base_version=data["base_version"],
            allow_pickle=data.get("allow_pickle", False),
            trust_remote_code=data.get("trust_remote_code", False),
            chat_template=data.get("chat_template", ""),
        )

    queued = submit(
        request,
        form,
        start_import,
        success=lambda version: f"Import of {version.label} queued; this page follows its progress.",
        then=lambda version: redirect("version-detail", name=model.name, number=version.number),
        fields={"path": "ref"},
    )
    if queued is not None:
        return queued
    return render(
        request,
        "registry/import_form.html",
        {"form": form, "model": model, "import_roots": [str(root) for root in settings.IMPORT_ROOTS]},
    )


@require_http_methods(["GET", "POST"])
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

    def upload_and_import() -> ModelVersion:
        upload = form.cleaned_data["file"]
        saved = services.save_upload(upload.chunks(), upload.name, team=model.owner_team)
        try:
            return services.start_import(
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

    queued = submit(
        request,
        form,
        upload_and_import,
        success=lambda version: f"Adapter uploaded; importing it as {version.label}.",
        then=lambda version: redirect("version-detail", name=model.name, number=version.number),
    )
    if queued is not None:
        return queued
    return render(request, "registry/upload_form.html", {"form": form, "model": model})
