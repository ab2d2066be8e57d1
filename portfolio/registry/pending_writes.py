"""What registrations in flight have written to the artifact store, kept in the database as they write.

A registration (an import, a dataset ingest, a fine-tune's output) stores its files first and records their
artifact after. One that fails deletes what it wrote (``discard_unrecorded``) in its own ``except``; one
whose process is killed, or whose machine is lost, runs no ``except``, and its blobs would stay in the store
for ever, billed as storage and referred to by nothing. So before each write its ``PendingWrites`` log
updates a ``PendingWrite`` row, deleted once the artifact is recorded or what it wrote is deleted, and
``sweep`` deletes what the rows that stayed behind name.

The sweep is safe against a run that is still alive however long it has been quiet: a live registration
holds claims on everything it wrote (``blobclaims``), and ``discard_unrecorded`` keeps claimed blobs and
recorded ones; a row with such a blob left is kept for the next sweep.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from portfolio.registry import blobclaims
from portfolio.registry.models import Artifact, PendingWrite
from portfolio.registry.storage import ArtifactStore, WriteLog, Written
from portfolio.registry.stores import default_store

logger = logging.getLogger(__name__)
# A row this long unchanged is looked at by the sweep: a live run's writes are claimed and stay anyway, so
# this only spares the sweep the rows of registrations that are under way.
QUIET_FOR = timedelta(hours=1)
ROWS_PER_SWEEP = 100


def discard_unrecorded(store: ArtifactStore, written: Written) -> list[str]:
    """Delete from ``store`` what a failed registration wrote (``written``), except what a recorded artifact
    refers to (blobs are shared by content: the same tokenizer file in many versions) and what a registration
    in flight has claimed (``blobclaims``: it found the blob stored and will refer to it). Returns the blobs
    deleted. Run after the registering transaction has rolled back, so its own rows no longer count."""
    deleted = []
    for digest in written.blobs:
        with transaction.atomic():  # the claim is checked, and the blob deleted, under one lock
            if (
                blobclaims.free(digest)
                and not Artifact.objects.filter(files__contains=[{"sha256": digest}]).exists()
            ):
                store.delete_blob(digest)
                deleted.append(digest)
    if written.manifest:
        with transaction.atomic():
            if (
                blobclaims.free(written.manifest)
                and not Artifact.objects.filter(pk=written.manifest).exists()
            ):
                store.delete_manifest(written.manifest)
    return deleted


class PendingWrites(WriteLog):
    """A ``before_write`` for ``store_directory`` (a ``WriteLog``) that also keeps what it is about to have
    written on a ``PendingWrite`` row, before each write. ``recorded()`` once the artifact is recorded,
    ``discard()`` when the registration failed or was superseded."""

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner[:200]
        self.token = secrets.token_hex(16)

    def __call__(self, so_far: Written) -> None:
        super().__call__(so_far)
        PendingWrite.objects.update_or_create(
            token=self.token,
            defaults={"owner": self.owner, "written": so_far.as_json(), "updated_at": timezone.now()},
        )

    def recorded(self) -> None:
        """Nothing is left to sweep: the artifact is recorded (what it wrote is referred to), or what it
        wrote is deleted. Best effort: a row left behind costs the sweep a look, never an outcome."""
        try:
            PendingWrite.objects.filter(token=self.token).delete()
        except DatabaseError:
            logger.exception(
                "pending write of %s: its row could not be deleted; left to the sweep", self.owner
            )

    def discard(self, store: ArtifactStore) -> None:
        """Delete what it wrote, unless recorded or claimed meanwhile (``discard_unrecorded``), for a
        registration whose outcome is settled. What a registration in flight claims is kept, and so is the
        row, for the sweep: that registration may fail too, and it did not write it. A store that fails is
        logged, its row likewise left to the sweep."""
        if self.written.blobs or self.written.manifest:
            try:
                left = _discard(store, self.written)
            except Exception:
                logger.exception(
                    "could not delete from the store what %s wrote: %s; left to the sweep",
                    self.owner,
                    self.written.as_json(),
                )
                return
            if left:
                return
        self.recorded()


def _discard(store: ArtifactStore, written: Written) -> list[str]:
    """``discard_unrecorded``, then what of ``written`` is still unrecorded: the blobs a registration in
    flight claimed, kept for it."""
    deleted = set(discard_unrecorded(store, written))
    return [
        digest
        for digest in written.blobs
        if digest not in deleted
        and not Artifact.objects.filter(files__contains=[{"sha256": digest}]).exists()
    ]


def sweep(quiet_for: timedelta = QUIET_FOR, store: ArtifactStore | None = None) -> int:
    """Delete what the rows quiet for ``quiet_for`` name (their runs died mid-registration), except what a
    recorded artifact refers to or a registration in flight claims; the rows done with. A row with a blob
    kept for a claim (or a store that failed) stays, and is looked at again after another quiet period."""
    store = store or default_store()
    done = 0
    stale = PendingWrite.objects.filter(updated_at__lt=timezone.now() - quiet_for).order_by("updated_at")
    for row in stale[:ROWS_PER_SWEEP]:
        try:
            left = _discard(store, Written.from_json(row.written))
        except Exception:
            logger.exception("pending write %s of %s: the store refused the delete", row.token, row.owner)
            left = ["(the store failed)"]
        unchanged = PendingWrite.objects.filter(pk=row.pk, updated_at=row.updated_at)
        if left:
            # Looked at again after another quiet period, behind the rows not seen yet: a row that stays
            # (a claim held long, a store refusing) never keeps the sweep from the others.
            unchanged.update(updated_at=timezone.now())
            continue
        # Unless its run wrote again meanwhile (then it is alive, and the row is its own again).
        done += unchanged.delete()[0]
    if done:
        logger.info("swept what %s dead registrations left in the store", done)
    return done
