"""An upload whose rows a version of its dataset holds already: that version is its outcome (a dataset holds
one version per set of rows, ``dataset_version_content_unique``).

- An archived version (``training.dataset_purge``) uploaded again is wanted again: it is made ready, audited
  as ``dataset_version.restore``.
- A purged one (archived, its stored files deleted) gets its files back from the upload when the upload is
  split as it was (the same eval fraction and split seed: its files are then what they were, but for
  ``original.jsonl``, the upload as sent this time), and is made ready; its row, statistics and lineage stay.
  A distillation asking its teacher again (temperature 0, the same prompts) lands here after every billed
  call: refusing it would fail the job each time. Split otherwise, it is refused, saying how to split it.
- A damaged one (a read or a check found a stored file missing or overwritten: its artifact is corrupt) is
  repaired the same way: split as it was, the upload's files are stored again (``ingest`` rewrites the blobs
  of damaged artifacts) and checked again once recorded; the version keeps its artifact when they are the
  same files, or takes the upload's when only ``original.jsonl`` differs. Split otherwise, it is refused.
"""

from __future__ import annotations

from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Invalid
from portfolio.registry import artifacts
from portfolio.registry.choices import Health
from portfolio.registry.models import Artifact
from portfolio.registry.stores import default_store
from training.choices import DatasetVersionStatus
from training.models import DatasetIngest, DatasetVersion

# How an ingest that repaired a damaged version's files begins its ``progress_detail`` (the page says so).
REPAIRED = "repaired"


def damaged(version: DatasetVersion) -> bool:
    """Whether ``version``'s stored files were found damaged (its artifact is marked corrupt)."""
    return Artifact.objects.filter(pk=version.artifact_id, health=Health.CORRUPT).exists()


def restorable(version: DatasetVersion, ingest: DatasetIngest) -> bool:
    """Whether the upload's files can stand for the purged, or damaged, ``version``'s."""
    lost = version.artifact_id is None or damaged(version)
    return lost and (version.eval_fraction, version.split_seed) == (ingest.eval_fraction, ingest.split_seed)


def reused(version: DatasetVersion, ingest: DatasetIngest, actor: Actor) -> DatasetVersion:
    """``version`` as the upload's outcome, ready; ``Invalid`` if its files were deleted or are damaged (and
    the upload is split otherwise: see ``restorable``)."""
    if version.artifact_id is None:
        raise _split_as_before(version, "whose stored files were deleted")
    if damaged(version):
        raise _split_as_before(version, "whose stored files are damaged")
    if version.status == DatasetVersionStatus.ARCHIVED:
        _ready(version, actor, {})
    return version


def _split_as_before(version: DatasetVersion, lost: str) -> Invalid:
    return Invalid(
        f"file: These rows are exactly {version.label}'s, {lost}. Upload them with eval fraction "
        f"{version.eval_fraction} and split seed {version.split_seed} to store them again as that version "
        "(a dataset holds one version per set of rows), or change a row to make a new one."
    )


def restore(version: DatasetVersion, artifact: Artifact, actor: Actor) -> str:
    """The purged or damaged ``version`` with the upload's files, ready; returns what the ingest did. A damaged
    one whose files these are keeps its artifact (its blobs were stored again); given other files (another
    ``original.jsonl``), it takes them, and its old artifact goes once nothing refers to it."""
    if version.artifact_id is None:
        _ready(version, actor, {"artifact": artifact})
        return "done"
    previous = version.artifact_id
    if artifact.pk != previous:
        _ready(version, actor, {"artifact": artifact})
        transaction.on_commit(lambda: artifacts.discard_if_unused(default_store(), previous), robust=True)
    elif version.status == DatasetVersionStatus.ARCHIVED:
        _ready(version, actor, {})
    return f"{REPAIRED} v{version.number}: its damaged files were stored again from this upload"


def _ready(version: DatasetVersion, actor: Actor, changes: dict) -> None:
    before = version.snapshot()
    for name, value in {"status": DatasetVersionStatus.READY, **changes}.items():
        setattr(version, name, value)
    version.save(update_fields=["status", *changes])
    audit.record(actor, "dataset_version.restore", version, before=before, after=version.snapshot())
