"""An adapter merged into a full version of its own, as the registry sees it: the request (permission, the
checks, the hook that starts the work) and the registration of the merged weights.

Why merge: on CPU, ``--enable-lora`` costs base requests about a third of their throughput and a request to
an adapter runs at about a fifth of the base's. A merged version is an ordinary base version, served
without LoRA. The weights are merged by training (it owns peft), which registers its starter in
``TrainingConfig.ready`` as ``ADAPTER_MERGERS``: the registry asks without importing it.

Lineage: the merged version belongs to the adapter's model, is derived from the adapter
(``parent_version``), and names the adapter and its base in its metrics and card.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.hashing import Manifest
from portfolio.registry.inspection import ModelFacts
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.services import _next_number


@dataclass(frozen=True)
class MergeStarted:
    """What a merger started: its job's id and state, and one sentence for the person who asked."""

    id: int
    status: str
    message: str


# Training registers the starter of a merge job: called inside ``request_merge``'s transaction with the
# actor and a checked, ready adapter; it records its own audit row and enqueues the work on commit.
ADAPTER_MERGERS: list[Callable[[Actor, ModelVersion], MergeStarted]] = []
# What the adapter's page says about its merges under way or failed (training: its merge jobs), a line each.
MERGE_NOTES: list[Callable[[ModelVersion], list[str]]] = []


class MergeNotes(list[str]):
    """The adapter page's lines about its merges, and the version it is merged as (no merge button then)."""

    merged_as: ModelVersion | None = None


def merge_notes(version: ModelVersion) -> MergeNotes:
    notes = MergeNotes(note for notes in MERGE_NOTES for note in notes(version))
    notes.merged_as = merged_as(version)
    if notes.merged_as is not None:
        label = notes.merged_as.label
        notes.append(f"Merged as {label}, a full version; archive {label} to merge this adapter again.")
    return notes


def merged_as(adapter: ModelVersion) -> ModelVersion | None:
    """The live (not archived or failed) version ``adapter`` was merged into, if any: merging again would
    only spend hours of a node's cores on a second copy of the same weights."""
    return (
        ModelVersion.objects.filter(parent_version=adapter, source=Source.MERGE)
        .exclude(status__in=VersionStatus.terminal())
        .select_related("model")
        .order_by("-number")
        .first()
    )


def check_mergeable(version: ModelVersion) -> ModelVersion:
    """The adapter's base, if ``version`` can be merged into it now; else why not. Asked when the merge is
    requested and when it registers (under the adapter's row lock), and before its process merges."""
    if version.kind != VersionKind.ADAPTER or version.base_version is None:
        raise Invalid(f"{version.label} is not an adapter: only an adapter can be merged into its base.")
    if version.status != VersionStatus.READY:
        raise Conflict(f"{version.label} is {version.status}; only a ready adapter can be merged.")
    merged = merged_as(version)
    if merged is not None:
        raise Conflict(
            f"{version.label} is already merged as {merged.label}; archive {merged.label} to merge it again."
        )
    base = version.base_version
    if base.status != VersionStatus.READY:
        raise Conflict(f"Its base {base.label} is {base.status}; merging needs a ready base.")
    if not ModelVersion.objects.shared_with_team(version.model.owner_team).filter(pk=base.pk).exists():
        # A merged version is a full copy of the base's weights: the adapter's team must still be let use them.
        raise Conflict(f"Its base {base.label} is no longer shared with {version.model.owner_team.name}.")
    return base


@transaction.atomic
def request_merge(*, actor: Actor, version: ModelVersion) -> MergeStarted:
    """Start merging the adapter ``version`` into a full version of its model (a job, enqueued on commit)."""
    gate.require(actor, "model.register", version.model)
    # The team's lock (the merger counts the team's merges under it) before the version's, as every taker of a
    # team's lock orders them: a restart onto the adapter deadlocked with this the other way.
    Team.objects.select_for_update(no_key=True).filter(pk=version.model.owner_team_id).first()
    version = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team", "base_version__model")
        .get(pk=version.pk)
    )
    check_mergeable(version)
    if not ADAPTER_MERGERS:
        raise Conflict("Merging adapters needs the training app (peft), which is not installed here.")
    return ADAPTER_MERGERS[0](actor, version)


def merged_card(adapter: ModelVersion, base: ModelVersion) -> str:
    return (
        f"# {adapter.model.name}: {adapter.label} merged into {base.label}\n\n"
        f"- **Adapter:** {adapter.label}\n- **Base:** {base.label}\n"
        "- **Serving:** a full version: deployed without `--enable-lora`, it answers as the adapter does "
        "on its base (greedy decoding gives the same tokens).\n"
        "- **License:** the base's weights are in it: the base's license applies.\n"
        + (f"\n## The adapter's card\n\n{adapter.model_card}\n" if adapter.model_card else "")
    )


@transaction.atomic
def register_merged_version(
    *,
    actor: Actor,
    adapter: ModelVersion,
    manifest: Manifest,
    facts: ModelFacts,
    store_uri: str,
    job_ref: str,
) -> ModelVersion:
    """The merged weights of ``adapter`` as a ready base version of its model, audited. Refused (nothing
    registered) if the adapter is no longer ready or the files are not a full model."""
    adapter = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team", "base_version__model")
        .get(pk=adapter.pk)
    )
    base = check_mergeable(adapter)
    if facts.is_adapter:
        raise Invalid("The merged files are still an adapter (adapter_config.json): not registered.")
    artifact = Artifact.objects.record(manifest, store_uri)
    version = ModelVersion.objects.create(
        model=adapter.model,
        number=_next_number(adapter.model),
        kind=VersionKind.BASE,
        parent_version=adapter,
        source=Source.MERGE,
        source_ref=f"{adapter.label} merged into {base.label}; {job_ref}"[:500],
        artifact=artifact,
        format=facts.format or base.format,
        architecture=facts.architecture or base.architecture,
        parameter_count=facts.parameter_count or base.parameter_count,
        context_length=facts.context_length or base.context_length,
        dtype=facts.dtype or base.dtype,
        has_chat_template=base.has_chat_template,
        shape=facts.shape or base.shape,
        metrics={
            "merged": {
                "adapter": adapter.label,
                "adapter_artifact": adapter.artifact_id,
                "base": base.label,
                "base_artifact": base.artifact_id,
            }
        },
        model_card=merged_card(adapter, base),
        status=VersionStatus.READY,
        progress=100,
        progress_detail="ready",
        ready_at=timezone.now(),
    )
    audit.record(
        actor,
        "model_version.merge",
        version,
        before={"adapter": adapter.label, "base": base.label},
        after={**version.snapshot(), "merged_from": adapter.label, "base": base.label},
    )
    return version
