"""The worker side of a dataset upload: the ingest job that turns a stored upload into a dataset version.

Its life cycle lives here and only here: ``queued`` (``services.upload_version`` stored the file and
enqueued the job) -> ``running`` (``run`` claims it) -> ``succeeded`` (the version is recorded, or an
identical one found), ``failed`` (the file's problems, kept by line number, or another refusal) or
``errored`` (a bug; see the worker log). ``reap_stale`` sends a silent one again, and gives up on one
that has not finished in a day. Each end that records no new version is audited (``dataset.ingest_failed``
by the system, ``dataset.ingest_reused``).

A version is made whole or not at all: the upload is validated line by line, split, measured and written
as normalized ``train.jsonl`` / ``eval.jsonl`` next to the ``original.jsonl`` in a private work folder,
stored in the content-addressed artifact store, and only then recorded, with its audit row, in one
transaction. A failure leaves no version, no artifact row and no work files behind. Progress (rows done of
the rows known) is written at most once a second, never per row.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Invalid
from portfolio.leases import Lease, LeaseLost, kept_here, still_held
from portfolio.registry import artifacts, blobclaims
from portfolio.registry.hashing import Manifest
from portfolio.registry.models import Artifact
from portfolio.registry.pending_writes import PendingWrites
from portfolio.registry.storage import Written, store_directory
from portfolio.registry.stores import default_store
from training import ingest_reuse, ingest_splits, splitting, tokens, validation
from training.choices import JobStatus, Split
from training.ingest_splits import EVAL_FILE, MEASURE, TRAIN_FILE, VALIDATE, DatasetInvalid
from training.models import Dataset, DatasetIngest, DatasetVersion

logger = logging.getLogger(__name__)

ORIGINAL_FILE = "original.jsonl"
SPLIT_FILES = {Split.TRAIN: TRAIN_FILE, Split.EVAL: EVAL_FILE}
REPORT_EVERY_SECONDS = 1.0
CHECK_EVERY_ROWS = 1024  # the clock is read this often, not per row
# An unfinished ingest with no sign of life for this long is sent again (its message was lost, or its worker
# died); one still unfinished after a day is given up.
RESEND_AFTER = timedelta(minutes=10)
# A file whose ingest kills its worker (out of memory) would be started again at once (Celery requeues a
# dead worker's task) or every RESEND_AFTER, for a day; after this many restarts it is errored instead.
MAX_RESENDS = 3
GIVE_UP_AFTER = timedelta(hours=24)
SYSTEM = Actor.for_system("training.ingest")


# --- The life cycle -------------------------------------------------------------------------------
def claim(ingest_id: int) -> bool:
    """queued -> running. A running one is claimed again: only a redelivery under the task's lease gets
    here, after the run that held it died (nothing is recorded before the end, so it starts over). Each such
    restart is counted in ``resends``; past MAX_RESENDS the ingest is errored and its upload deleted."""
    now = timezone.now()
    started = {
        "status": JobStatus.RUNNING,
        "started_at": now,
        "heartbeat_at": now,
        "progress": 0,
        "rows_done": 0,
    }
    unfinished = DatasetIngest.objects.filter(pk=ingest_id)
    if unfinished.filter(status=JobStatus.QUEUED).update(**started):
        return True
    # Counted here, not by the reaper: whether the broker requeued it at once or the reaper sent it again,
    # each death of a run is counted once, by the start that follows it.
    dying = unfinished.filter(status=JobStatus.RUNNING)
    if dying.filter(resends__lt=MAX_RESENDS).update(resends=F("resends") + 1, **started):
        return True
    ingest = dying.only("resends", "upload_path").first()
    if ingest is not None:
        _give_up_dying(ingest.pk, ingest.resends, ingest.upload_path)
    return False


def _give_up_dying(ingest_id: int, resends: int, upload_path: str) -> bool:
    """running -> errored, for an ingest whose worker died at each of its ``resends + 1`` starts."""
    detail = (
        f"The ingest was started {resends + 1} times and its worker died each time (a file too large "
        "for the worker's memory?). Upload a smaller file, or ask an admin to check the workers."
    )
    dying = DatasetIngest.objects.filter(status=JobStatus.RUNNING, resends=resends)
    if not _finish(ingest_id, JobStatus.ERRORED, detail, unfinished=dying, progress_detail="errored"):
        return False
    Path(upload_path).unlink(missing_ok=True)
    remove_work(ingest_id)
    return True


def _finish(ingest_id: int, status: str, detail: str = "", *, unfinished=None, **fields) -> bool:
    """running (or one of ``unfinished``) -> a final state, by compare-and-swap. An end other than success
    is audited (``dataset.ingest_failed``) in the same transaction: a failed ingest leaves no version behind
    to show who or what ended it."""
    if unfinished is None:
        unfinished = DatasetIngest.objects.filter(status=JobStatus.RUNNING)
    with transaction.atomic():
        if not unfinished.filter(pk=ingest_id).update(
            status=status, status_detail=detail[:4000], finished_at=timezone.now(), **fields
        ):
            return False
        if status != JobStatus.SUCCEEDED:
            ended = DatasetIngest.objects.select_related("dataset__owner_team").get(pk=ingest_id)
            after = {"status": status, "reason": detail[:500]}  # our own wording: no row of the file
            audit.record(SYSTEM, "dataset.ingest_failed", ended, after=after)
    return True


class Superseded(Exception):
    """The ingest was ended by someone else (given up by the reaper) while this run worked on it."""


def _succeed(ingest_id: int, version: DatasetVersion, created: bool, detail: str = "done") -> None:
    """running -> succeeded; raises ``Superseded`` when the ingest is no longer running, which rolls back
    the transaction it is called in (the version it would have named)."""
    if not _finish(
        ingest_id,
        JobStatus.SUCCEEDED,
        version=version,
        created_version=created,
        progress=100,
        progress_detail=detail[:200],
    ):
        raise Superseded(f"ingest #{ingest_id} was ended meanwhile")


def _problems(report: validation.Report) -> dict:
    """What the upload page showed of a refused file, as JSON."""
    return {
        "summary": report.summary(),
        "lines": report.lines,
        "error_total": report.error_total,
        "errors": [
            {"line": e.line, "kind": e.kind, "kind_label": e.kind_label, "message": e.message}
            for e in report.errors
        ],
        "counts": [[kind, label, n] for kind, label, n in report.count_summary()],
        "empty_lines": report.empty_lines,
        "empty_line_numbers": report.empty_line_numbers,
        "duplicates": report.duplicates,
        "duplicate_lines": [list(pair) for pair in report.duplicate_lines],
    }


def refusal(ingest: DatasetIngest) -> Invalid | None:
    """A failed ingest's reason as the error the upload answered with when it ran in the request."""
    if ingest.status not in (JobStatus.FAILED, JobStatus.ERRORED):
        return None
    problems = ingest.problems or {}
    if problems.get("errors"):
        fields = {"file": [f"line {e['line']}: {e['message']}" for e in problems["errors"]]}
        error = Invalid(ingest.status_detail, fields=fields)
        error.code = DatasetInvalid.code
        return error
    return Invalid(ingest.status_detail)


def reap_stale(
    resend_after: timedelta = RESEND_AFTER, give_up_after: timedelta = GIVE_UP_AFTER
) -> tuple[list[int], list[int]]:
    """No ingest stays queued or running for ever: one silent for ``resend_after`` (a lost message, a
    worker that died) is sent again, and the task's lease leaves a live run alone while a new one starts
    over from the stored upload; one unfinished after ``give_up_after`` is errored with the reason and its
    upload deleted. Returns ``(sent again, given up)``."""
    now = timezone.now()
    unfinished = DatasetIngest.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    given_up = []
    for ingest in unfinished.filter(created_at__lt=now - give_up_after):
        hours = int(give_up_after.total_seconds() // 3600)
        detail = (
            f"The ingest did not finish within {hours} h (its worker kept dying?). Upload the file again."
        )
        if _finish(ingest.pk, JobStatus.ERRORED, detail, unfinished=unfinished, progress_detail="errored"):
            Path(ingest.upload_path).unlink(missing_ok=True)
            if lease_of(ingest.pk).holder() is None:  # a live run's folder is its own to remove
                remove_work(ingest.pk)
            given_up.append(ingest.pk)
    cutoff = now - resend_after
    silent = unfinished.filter(created_at__gte=now - give_up_after).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    )
    resent = []
    rows = silent.order_by("pk").values_list("pk", "status", "resends", "upload_path")
    for ingest_id, status, resends, upload_path in rows:
        if lease_of(ingest_id).holder() is not None:
            continue  # a live run, silent a while (storing a large file says nothing): left alone
        # A run that started and fell silent without its lease: its worker died. Out of restarts, it is given
        # up here (its next start would be refused); otherwise it, like one still queued (its message lost, or
        # the workers busy with long tasks), is sent again, and ``claim`` counts the restart when it comes.
        if status == JobStatus.RUNNING and resends >= MAX_RESENDS:
            if _give_up_dying(ingest_id, resends, upload_path):
                given_up.append(ingest_id)
            continue
        # Silent from now: sent again, it has RESEND_AFTER to start before the next resend.
        if unfinished.filter(pk=ingest_id, resends=resends).update(heartbeat_at=now):
            logger.warning("ingest #%s has been silent since before %s: sent again", ingest_id, cutoff)
            current_app.signature("training.ingest_dataset", args=[ingest_id]).apply_async()
            resent.append(ingest_id)
    return resent, given_up


def lease_of(ingest_id: int) -> Lease:
    """The lease its run holds: a redelivery, or the reaper, finds a live run by it and leaves it alone."""
    return Lease(f"training.ingest_dataset:{ingest_id}")


def run(ingest_id: int, *, actor: Actor | None = None) -> DatasetIngest:
    """Run a queued ingest to its end and return it. A refused file is recorded as failed and its
    ``Invalid`` (a ``DatasetInvalid`` for line-numbered problems) raised, for callers that ingest inline.
    ``actor`` names who the version's audit row is by (default: whoever uploaded the file)."""
    ingest = DatasetIngest.objects.select_related(
        "dataset__owner_team", "created_by", "tokenizer_version"
    ).get(pk=ingest_id)
    if not claim(ingest_id):  # idempotent: already finished (or just given up, its worker dying each time)
        ingest.refresh_from_db()
        return ingest
    if actor is None:
        actor = Actor(user=ingest.created_by) if ingest.created_by else SYSTEM
    log = PendingWrites(f"ingest #{ingest_id}")  # what a killed run wrote is the sweep's
    # The lease the task keeps (``training.tasks.ingest_dataset``); None when an ingest runs inline.
    progress = _Progress(ingest_id, kept_here())
    lost = ended = False  # ended: by this run, whose upload it then is to delete whatever its lease
    try:
        try:
            with blobclaims.registering():  # what it finds stored stays there until its version is recorded
                prepared = prepare(ingest, progress, before_write=log)
                progress.ensure_held()  # preparing took a while: still this run's to record?
                version, stored = record(ingest, prepared, actor)
                ended = True
        except BaseException:  # deleted once its own claims are released (``blobclaims.registering``)
            log.discard(default_store())
            raise
        if stored:
            log.recorded()
            if version.artifact_id:  # files found damaged before and stored again are checked again
                artifacts.verify_if_damaged(version.artifact_id)
        else:  # the same rows were recorded meanwhile: what this run stored is nobody's
            log.discard(default_store())
    except LeaseLost:
        # Paused past its lease, this run may have been replaced by a redelivery: the ingest's outcome and its
        # upload are the live run's (or the reaper's, once nobody reports).
        lost = True
        logger.warning("ingest #%s lost its lease: this run stops, leaving the ingest alone", ingest_id)
    except Superseded:
        logger.warning("ingest #%s was ended while it ran: its version was not recorded", ingest_id)
    except Exception as exc:
        # A run that lost its lease may fail because of the run that replaced it (whose ``prepare`` removed
        # this one's work folder): the outcome is not this run's to record.
        if not still_held(progress.lease):
            lost = True
            logger.warning("ingest #%s failed after losing its lease: left alone", ingest_id, exc_info=True)
        elif isinstance(exc, Invalid):
            problems = _problems(exc.report) if isinstance(exc, DatasetInvalid) else {}
            ended = _finish(
                ingest_id, JobStatus.FAILED, exc.message, problems=problems, progress_detail="failed"
            )
            raise
        else:
            logger.exception("ingest #%s of dataset %s failed", ingest_id, ingest.dataset_id)
            detail = f"Internal error during the ingest ({exc.__class__.__name__}); see the worker log."
            ended = _finish(ingest_id, JobStatus.ERRORED, detail, progress_detail="errored")
            raise
    finally:
        # The upload stays for the live run once this one may have been replaced (a redelivery reads it).
        if ended or (not lost and still_held(progress.lease)):
            Path(ingest.upload_path).unlink(missing_ok=True)
    ingest.refresh_from_db()
    return ingest


def run_here(ingest_id: int, *, actor: Actor | None = None) -> tuple[DatasetVersion, bool]:
    """Run an ingest in this process (workers that make a dataset, the demo command): ``(version, created)``,
    ``created`` False when an existing version holds the same rows; a refused file raises its ``Invalid``."""
    done = run(ingest_id, actor=actor)
    if done.version is None:
        raise RuntimeError(f"ingest #{ingest_id} is {done.status}, not finished")
    return done.version, done.created_version


class _Progress:
    """Progress into the ingest row, at most once a second (it doubles as the ingest's heartbeat). Each report
    first checks the run's lease: a run that lost it stops (``LeaseLost``) before writing anything."""

    def __init__(self, ingest_id: int, lease: Lease | None = None):
        self.ingest_id = ingest_id
        self.lease = lease
        self.last = time.monotonic()

    def ensure_held(self) -> None:
        if self.lease is not None:
            self.lease.ensure_held()

    def __call__(self, percent: int, detail: str, *, force: bool = False, **fields) -> None:
        self.ensure_held()
        now = time.monotonic()
        if force or now - self.last >= REPORT_EVERY_SECONDS:
            self.last = now
            DatasetIngest.objects.filter(pk=self.ingest_id, status=JobStatus.RUNNING).update(
                progress=max(0, min(99, percent)),
                progress_detail=detail[:200],
                heartbeat_at=timezone.now(),
                **fields,
            )


# --- The work -------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What an ingest made before recording anything: the version's stored files and what was measured, or
    the existing version that holds the same rows."""

    existing: DatasetVersion | None = None
    manifest: Manifest | None = None
    store_uri: str = ""
    content_sha256: str = ""
    written: ingest_splits.Written | None = None
    report: validation.Report | None = None
    context_length: int | None = None


def _quiet(percent: int, detail: str, **fields) -> None:
    pass


def _work_root() -> Path:
    return Path(settings.DATA_DIR) / "work"


def _work_prefix(ingest_id: int) -> str:
    return f"dataset-ingest-{ingest_id}-"


def remove_work(ingest_id: int) -> None:
    """The ingest's work folders (a full copy of its upload, and more): ``prepare`` removes its own when it
    ends, but a run killed outright (SIGKILL, the OOM killer) leaves them behind."""
    for folder in _work_root().glob(f"{_work_prefix(ingest_id)}*"):
        shutil.rmtree(folder, ignore_errors=True)


def prepare(
    ingest: DatasetIngest, progress=_quiet, *, before_write: Callable[[Written], None] | None = None
) -> Prepared:
    """The work: check every line, split, measure, store the files. Raises ``Invalid`` for a refused file.
    ``before_write`` is told what it is about to write to the store (``store_directory``)."""
    dataset = ingest.dataset
    remove_work(ingest.pk)  # what a killed run left; the task's lease lets no other run be live
    work_root = _work_root()
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=work_root, prefix=_work_prefix(ingest.pk)))
    try:
        files = workdir / "files"
        files.mkdir()
        # A copy: the upload stays whole for a redelivery until the ingest has ended.
        shutil.copyfile(ingest.upload_path, files / ORIGINAL_FILE)
        report = validation.Report()
        splitter = splitting.Splitter(ingest.split_seed, ingest.eval_fraction)
        line_numbers: array = array("I")
        digest = hashlib.sha256()  # of the normalized rows: the version's content hash
        normalized = workdir / "normalized.jsonl"
        size = max(ingest.size_bytes, 1)
        progress(0, "checking the rows", force=True)
        with (files / ORIGINAL_FILE).open("rb") as source, normalized.open("wb") as out:
            for row in validation.scan(source, report, shape=dataset.kind):
                out.write(row.canonical + b"\n")
                digest.update(row.canonical + b"\n")
                splitter.add(row.label, row.canonical, splitting.answer_of(row.data))
                line_numbers.append(row.line)
                if report.rows % CHECK_EVERY_ROWS == 0:
                    done = source.tell()
                    progress(VALIDATE * done // size, f"checked {report.lines:,} lines ({done // 2**20} MiB)")
        if not report.ok:
            raise DatasetInvalid(report)
        if report.rows == 0:
            raise Invalid("file: The file holds no rows (only empty lines, or nothing).")
        content_sha256 = digest.hexdigest()
        existing = dataset.versions.filter(content_sha256=content_sha256).first()
        if existing is not None and not ingest_reuse.restorable(existing, ingest):
            return Prepared(existing=existing)  # else its files are made again, and put back by ``record``
        splitter.finish()
        try:
            measure = tokens.measure_for(ingest.tokenizer_version)
        except tokens.TokenizerUnavailable as exc:
            raise Invalid(f"base_version: {exc}") from None
        progress(VALIDATE, f"measuring {report.rows:,} rows", force=True, rows_total=report.rows)
        try:
            written = ingest_splits.write(
                report, normalized, line_numbers, splitter, measure, files, progress
            )
        except tokens.TemplateTooSlow as exc:
            raise Invalid(f"base_version: {exc}") from None
        normalized.unlink()
        progress(VALIDATE + MEASURE, "storing the files", force=True, rows_done=report.rows)
        total, stored = sum(p.stat().st_size for p in files.rglob("*") if p.is_file()), 0

        def on_bytes(n: int) -> None:  # a large file takes a while: its lease is checked as it goes
            nonlocal stored
            stored += n
            percent = VALIDATE + MEASURE + (99 - VALIDATE - MEASURE) * stored // max(total, 1)
            progress(percent, f"storing the files ({stored // 2**20} / {total // 2**20} MiB)")

        store = default_store()
        # A damaged artifact's blobs are stored again from these files (a repair: ``ingest_reuse``).
        rewrite = artifacts.damaged_blobs()
        manifest = store_directory(store, files, on_bytes, before_write=before_write, rewrite=rewrite)
        return Prepared(
            manifest=manifest,
            store_uri=store.uri(manifest.artifact_id),
            content_sha256=content_sha256,
            written=written,
            report=report,
            context_length=measure.context_length if measure.tokenizer is not None else None,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _next_number(dataset: Dataset) -> int:
    last = dataset.versions.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


@transaction.atomic
def record(ingest: DatasetIngest, prepared: Prepared, actor: Actor) -> tuple[DatasetVersion, bool]:
    """Record the version (with its artifact and audit row) and end the running ingest, in one transaction:
    ``(version, stored)``, ``stored`` False when what this run stored is nobody's: an existing version holding
    the same rows is the outcome instead (``ingest_reuse``; a purged or damaged one gets this run's files)."""
    dataset = ingest.dataset
    Dataset.objects.select_for_update(of=("self",)).filter(
        pk=dataset.pk
    ).first()  # serialise numbering per dataset
    existing = prepared.existing or dataset.versions.filter(content_sha256=prepared.content_sha256).first()
    if existing is not None:  # known before, or the same rows arrived from another upload meanwhile
        existing = DatasetVersion.objects.select_for_update(of=("self",)).get(pk=existing.pk)
        stored = prepared.manifest is not None and ingest_reuse.restorable(existing, ingest)
        repaired = stored and existing.artifact_id is not None
        detail = "done"
        if stored:
            assert prepared.manifest is not None
            artifact = Artifact.objects.record(prepared.manifest, prepared.store_uri)
            detail = ingest_reuse.restore(existing, artifact, actor)
        else:
            ingest_reuse.reused(existing, ingest, actor)
        _succeed(ingest.pk, existing, False, detail)
        after = {"version": existing.number} | ({"repaired": True} if repaired else {})
        audit.record(actor, "dataset.ingest_reused", ingest, after=after)
        return existing, stored
    manifest, written, report = prepared.manifest, prepared.written, prepared.report
    assert manifest is not None and written is not None and report is not None
    artifact = Artifact.objects.record(manifest, prepared.store_uri)
    version = DatasetVersion.objects.create(
        dataset=dataset,
        number=_next_number(dataset),
        shape=report.shape or dataset.kind,
        artifact=artifact,
        content_sha256=prepared.content_sha256,
        row_count=report.rows,
        train_count=written.train,
        eval_count=written.eval,
        eval_fraction=ingest.eval_fraction,
        split_seed=ingest.split_seed,
        stats=written.stats,
        labels=written.labels,
        tokenizer_version=ingest.tokenizer_version,
        context_length=prepared.context_length,
        source_filename=ingest.source_filename,
        size_bytes=ingest.size_bytes,
        created_by=ingest.created_by,
    )
    audit.record(actor, "dataset_version.create", version, after=version.snapshot())
    _succeed(ingest.pk, version, True)  # in the same transaction: a version never outlives a running ingest
    return version, True
