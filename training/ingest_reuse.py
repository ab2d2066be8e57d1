"""An upload whose rows a version of its dataset holds already: that version is its outcome (a dataset holds
one version per set of rows, ``dataset_version_content_unique``).

- An archived version (``training.dataset_purge``) uploaded again is wanted again: it is made ready, audited
  as ``dataset_version.restore``.
- A purged one (archived, its stored files deleted) gets its files back from the upload when the upload is
  split as it was (the same eval fraction and split seed: its files are then what they were, but for
  ``original.jsonl``, the upload as sent this time), and is made ready; its row, statistics and lineage stay.
  A distillation asking its teacher again (temperature 0, the same prompts) lands here after every billed
  call: refusing it would fail the job each time. Split otherwise, it is refused, saying how to split it.
"""

from __future__ import annotations

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Invalid
from portfolio.registry.models import Artifact
from training.choices import DatasetVersionStatus
from training.models import DatasetIngest, DatasetVersion


def restorable(version: DatasetVersion, ingest: DatasetIngest) -> bool:
    """Whether the upload's files can stand for the purged ``version``'s."""
    return version.artifact_id is None and (version.eval_fraction, version.split_seed) == (
        ingest.eval_fraction,
        ingest.split_seed,
    )


def reused(version: DatasetVersion, ingest: DatasetIngest, actor: Actor) -> DatasetVersion:
    """``version`` as the upload's outcome, ready; ``Invalid`` if its files were deleted (and the upload is
    split otherwise: see ``restorable``)."""
    if version.artifact_id is None:
        raise Invalid(
            f"file: These rows are exactly {version.label}'s, whose stored files were deleted. Upload them with "
            f"eval fraction {version.eval_fraction} and split seed {version.split_seed} to store them again "
            "as that version (a dataset holds one version per set of rows), or change a row to make a new one."
        )
    if version.status == DatasetVersionStatus.ARCHIVED:
        _ready(version, actor, {})
    return version


def restore(version: DatasetVersion, artifact: Artifact, actor: Actor) -> DatasetVersion:
    """The purged ``version`` with the upload's files, ready."""
    _ready(version, actor, {"artifact": artifact})
    return version


def _ready(version: DatasetVersion, actor: Actor, changes: dict) -> None:
    before = version.snapshot()
    for name, value in {"status": DatasetVersionStatus.READY, **changes}.items():
        setattr(version, name, value)
    version.save(update_fields=["status", *changes])
    audit.record(actor, "dataset_version.restore", version, before=before, after=version.snapshot())
