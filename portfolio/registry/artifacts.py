"""A version's stored files: a verified local copy where engines and trainers load them, and the health
of an artifact as verification (or a download, or a copy) finds it."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict
from portfolio.leases import Lease
from portfolio.registry import cache_eviction, importers
from portfolio.registry.choices import Health
from portfolio.registry.hashing import Manifest
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.pending_writes import PendingWrites
from portfolio.registry.storage import ArtifactStore, CorruptArtifact, Written, materialize, verify
from portfolio.registry.stores import default_store

logger = logging.getLogger(__name__)
# Who records a health change nobody asked for: the periodic verifier, a download or a copy that found damage.
VERIFIER = Actor.for_system("registry.verify")


def local_copy(manifest: Manifest, destination: Path) -> Path:
    """``materialize`` into this machine's cache (``destination`` under ``ARTIFACT_CACHE``), whose copies of
    deleted artifacts are then deleted (``cache_eviction``, at most hourly per process): every process that
    makes copies clears them, not only node agents (web's and the control workers' caches grew for good)."""
    folder = materialize(default_store(), manifest, destination)
    try:
        cache_eviction.evict_due()
    except Exception:  # the copy is made: a failed clean-up pass (a copy gone meanwhile...) must not undo it
        logger.exception("artifact cache: the pass after a copy failed")
    return folder


def materialize_version(version: ModelVersion) -> Path:
    """A verified local copy of a version's files (a damaged one marks its artifact corrupt)."""
    artifact = version.artifact
    if artifact is None:
        raise CorruptArtifact(version.label, "has no stored artifact")
    try:
        return local_copy(artifact.manifest(), Path(settings.ARTIFACT_CACHE) / artifact.id)
    except CorruptArtifact as exc:
        mark_artifact_health(artifact.id, [str(exc)])
        raise


def discard_if_unused(store: ArtifactStore, artifact_id: str) -> bool:
    """Delete an artifact nothing refers to any more (a fine-tune's superseded checkpoint, a purged version's
    files): its row, then its manifest and the blobs no other recorded artifact holds. Whether its row was
    deleted: one still referred to (every reference protects its artifact) is kept.

    The row goes in one transaction with a ``PendingWrite`` naming its files, deleted once they are: a store
    that fails, or a process that dies, before they are deleted leaves them to ``pending_writes.sweep``,
    which tries again (they were referred to by nothing, billed to nobody, and never deleted)."""
    log = PendingWrites(f"the deletion of artifact {artifact_id}")
    try:
        with transaction.atomic():
            artifact = Artifact.objects.select_for_update().filter(pk=artifact_id).first()
            if artifact is None:
                return False
            digests = [entry["sha256"] for entry in artifact.files]
            artifact.delete()
            log(Written(blobs=digests, manifest=artifact_id))
    except ProtectedError:
        return False
    log.discard(store)  # a store that fails is logged, and its row left to the sweep
    return True


def purge_files(version, *, archived: str, reasons: list[str]) -> dict:
    """The stored files of an archived version (a model's or a dataset's) deleted, the version kept listed
    without them: refused unless it is ``archived`` with files, or while ``reasons`` say something still reads
    them. The caller holds the version's row lock (it checked the reasons under it) and its gate, and audits
    the change in its transaction: the version's snapshot before it is returned.

    The files are deleted once the change is committed (a rollback keeps every file); the artifact goes only
    if nothing else refers to it (another version of the same files, a dataset's or a model's), and each
    blob only if no other artifact holds it."""
    if version.status != archived:
        raise Conflict(
            f"{version.label} is {version.status}: archive it first, then delete its stored files."
        )
    if version.artifact_id is None:
        raise Conflict(f"{version.label} has no stored files.")
    if reasons:
        raise Conflict(f"{version.label}'s files cannot be deleted: {'; '.join(reasons)}.")
    before = version.snapshot()
    artifact_id = version.artifact_id
    version.artifact = None
    version.save(update_fields=["artifact"])
    transaction.on_commit(lambda: _discard_purged(version, artifact_id))
    return before


def _discard_purged(version, artifact_id: str) -> None:
    """The purged artifact deleted, and with it this machine's copy of its files (the web host's, made for
    the rows page, the API and downloads): the periodic eviction would keep it for up to an hour more, and
    runs only where a copy is made next."""
    try:
        if discard_if_unused(default_store(), artifact_id):
            cache_eviction.evict_copies_of(artifact_id)
    except Exception:  # what the store kept is the sweep's (``discard_if_unused``); a copy, the next pass's
        logger.exception("%s: its files (artifact %s) could not all be deleted", version, artifact_id)


def forget_gguf_conversions(files: list[dict]) -> None:
    """After a model version's purge (``files``: its artifact's), this machine's conversions of the GGUF it
    was imported from (kept beside its conversion as ``original/*.gguf``) are deleted, unless a version
    whose files are kept still holds the same GGUF: converted weights are as large as the files purged."""
    for entry in files:
        path, digest = entry["path"], entry["sha256"]
        if not (path.startswith("original/") and path.endswith(".gguf")):
            continue
        if not ModelVersion.objects.filter(artifact__files__contains=[{"sha256": digest}]).exists():
            importers.delete_conversions(digest)


def verify_artifact(artifact_id: str, *, actor: Actor = VERIFIER) -> list[str]:
    """Re-hash every stored file of an artifact now and record its health: the problems found. ``actor``
    names who asked (a person's verify click), the periodic verifier otherwise."""
    artifact = Artifact.objects.filter(pk=artifact_id).first()
    if artifact is None:  # purged since it was asked for
        return []
    problems = [str(p) for p in verify(default_store(), artifact.manifest())]
    mark_artifact_health(artifact_id, problems, actor=actor)
    return problems


def damaged_blobs() -> frozenset[str]:
    """The blobs of every artifact found damaged: an import of the same files stores them again
    (``storage.store_directory``'s ``rewrite``), as the damaged version's page asks."""
    files = Artifact.objects.filter(health=Health.CORRUPT).values_list("files", flat=True)
    return frozenset(entry["sha256"] for listing in files for entry in listing)


def verify_if_damaged(artifact_id: str) -> None:
    """Checks again, after its files were stored again, an artifact found damaged before."""
    if Artifact.objects.filter(pk=artifact_id, health=Health.CORRUPT).exists():
        verify_artifact(artifact_id)


def verify_on_request(artifact_id: str, *, actor: Actor) -> list[str]:
    """``verify_artifact`` for a person's click or call, which re-hashes every file (up to the import
    limit) in their request: one at a time per artifact, a second asker is told to wait for the first. A
    change of health it finds is audited as ``actor``'s: the trail says who asked."""
    lease = Lease(f"registry.verify:{artifact_id}")
    if not lease.acquire(wait=False):
        raise Conflict("These files are being checked already; the result shows on the version when it ends.")
    with lease.kept():
        problems = verify_artifact(artifact_id, actor=actor)
    if not Artifact.objects.filter(pk=artifact_id).exists():
        raise Conflict("These files were deleted while they were checked: the version was purged.")
    return problems


@transaction.atomic
def mark_artifact_health(artifact_id: str, problems: list[str], *, actor: Actor = VERIFIER) -> None:
    """Record an artifact's health as found now; a change of it, either way, is audited on every version
    that holds the artifact (a model's or a dataset's), in this transaction. ``actor``: who found it."""
    artifact = Artifact.objects.select_for_update().filter(pk=artifact_id).first()
    if artifact is None:  # purged while it was checked (a verify re-hashes for minutes): no health to record
        return
    health = Health.CORRUPT if problems else Health.OK
    was = artifact.health
    artifact.health, artifact.health_detail, artifact.verified_at = (
        health,
        "\n".join(problems),
        timezone.now(),
    )
    artifact.save(update_fields=["health", "health_detail", "verified_at"])
    if was == health:
        return
    before = {"artifact": artifact.id, "health": was}
    after = {"artifact": artifact.id, "health": health, "problems": problems[:20]}
    for version in artifact.versions.select_related("model__owner_team"):
        action = "model_version.corrupt" if problems else "model_version.healthy"
        audit.record(actor, action, version, before=before, after=after)
    # Training's versions hold artifacts too; reached by the reverse relation's name, so the registry
    # imports nothing of the layer above it.
    for held in artifact.dataset_versions.select_related("dataset__owner_team"):
        action = "dataset_version.corrupt" if problems else "dataset_version.healthy"
        audit.record(actor, action, held, before=before, after=after)
