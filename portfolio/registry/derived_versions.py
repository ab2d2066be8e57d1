"""A version derived from another: the same files with a chat template in the tokenizer (the one kind of
derivation so far). Versions are immutable, so a template never changes a version; it makes a new one."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry import blobclaims, chat_templates
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.hashing import Manifest
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.services import _next_number


def set_chat_template(*, actor: Actor, version: ModelVersion, chat_template: str) -> ModelVersion:
    """A new version of ``version``'s model with the same files but ``chat_template`` in the tokenizer,
    derived from it (lineage), ready at once. Versions are immutable, so the template never changes
    ``version`` itself; its deployments and aliases move to the new one only when someone moves them.

    Only the rewritten tokenizer_config.json is stored anew (the weights are shared blobs), so this runs
    in the request. The audit row keeps the template's digest; the text is in the new version's files."""
    from portfolio.registry.pending_writes import PendingWrites
    from portfolio.registry.storage import CorruptArtifact
    from portfolio.registry.stores import default_store

    gate.require(actor, "model.register", version.model)
    chat_template = chat_templates.validate(chat_template)
    if version.kind != VersionKind.BASE:
        raise Invalid(
            "chat_template: An adapter is served with its base version's tokenizer and template; "
            "set the template on the base version and import the adapter on the new one."
        )
    if version.status != VersionStatus.READY or version.artifact is None:
        raise Conflict(
            f"{version.label} is {version.status}; a chat template is set on a ready version only."
        )
    store = default_store()
    # What it writes is deleted if the registration fails (the parent archived meanwhile), and by the sweep
    # if the request dies first.
    log = PendingWrites(f"the chat template of {version.label}")
    with blobclaims.registering():  # the rewritten tokenizer file stays stored until it is recorded
        try:
            manifest = chat_templates.derive_manifest(store, version.artifact.manifest(), chat_template, log)
            derived = _register_derived(
                actor, version, manifest, store.uri(manifest.artifact_id), chat_template
            )
        except BaseException as exc:
            log.discard(store)
            if isinstance(exc, CorruptArtifact):
                raise Conflict(
                    f"{version.label}'s stored files are damaged ({exc}); verify it and import it again."
                ) from None
            raise
    log.recorded()
    return derived


@transaction.atomic
def _register_derived(
    actor: Actor, version: ModelVersion, manifest: Manifest, store_uri: str, chat_template: str
) -> ModelVersion:
    parent = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team")
        .get(pk=version.pk)
    )
    if parent.status != VersionStatus.READY:
        raise Conflict(f"{parent.label} is {parent.status}; a chat template is set on a ready version only.")
    artifact = Artifact.objects.record(manifest, store_uri)
    derived = ModelVersion.objects.create(
        model=parent.model,
        number=_next_number(parent.model),
        kind=VersionKind.BASE,
        parent_version=parent,
        source=Source.DERIVED,
        source_ref=f"{parent.label} with a chat template",
        artifact=artifact,
        format=parent.format,
        architecture=parent.architecture,
        parameter_count=parent.parameter_count,
        context_length=parent.context_length,
        dtype=parent.dtype,
        quantization=parent.quantization,
        has_chat_template=True,
        shape=parent.shape,
        family=parent.family,
        architecture_facts=parent.architecture_facts,
        model_card=parent.model_card,
        # Eval scores are not carried over: a new template changes every chat prompt the model sees.
        status=VersionStatus.READY,
        progress=100,
        progress_detail="ready",
        ready_at=timezone.now(),
        created_by=actor.user,
    )
    audit.record(
        actor,
        "model_version.chat_template",
        derived,
        before={"version": parent.label, "has_chat_template": parent.has_chat_template},
        after={
            **derived.snapshot(),
            "derived_from": parent.label,
            "chat_template": chat_templates.fingerprint(chat_template),
        },
    )
    return derived
