"""Merge jobs: started from the adapter's page or the API (through ``portfolio.registry.merging``, which
this app hooks into in ``TrainingConfig.ready``), claimed and watched by a control task, computed in a
child process (``training.merges.runner``, started as a fine-tune's trainer is), reaped when their
watcher dies.

Contract: a merge ends registered and succeeded in one transaction, or failed/errored with the reason,
nothing registered and nothing left in the artifact store that no recorded artifact uses (nor its merged
weights in ``DATA_DIR/work``: ``remove_work``); a job is never left running (the watcher fails it when its
process exits, is killed or runs past ``MERGE_TIMEOUT_SECONDS``; ``reap_stale`` when the watcher itself is
gone). Its process's wall time is recorded on the job and billed as a training job's compute on the pool of
the node it ran on."""

from __future__ import annotations

import shutil
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import psutil
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.billing import budgets
from portfolio.errors import Conflict, DomainError
from portfolio.registry import merging
from portfolio.registry.inspection import InspectionError
from portfolio.registry.models import ModelVersion
from portfolio.registry.storage import CorruptArtifact, Written
from training import long_queue
from training.choices import JobStatus
from training.merges.models import IN_FLIGHT, MergeJob

SYSTEM = "training.merge"


class _Abandoned(Exception):
    """The job was ended by someone else (the reaper) while the weights were merged: nothing is registered."""


def start_merge(actor: Actor, adapter: ModelVersion) -> merging.MergeStarted:
    """``portfolio.registry.merging.ADAPTER_MERGERS``: called in ``request_merge``'s transaction, which has
    checked the permission and the adapter and holds its row."""
    in_flight = MergeJob.objects.filter(adapter=adapter, status__in=IN_FLIGHT).first()
    if in_flight is not None:
        raise Conflict(f"Merge #{in_flight.pk} of {adapter.label} is already {in_flight.status}.")
    budgets.check_can_spend(adapter.model.owner_team)  # its node's cores are billed: not past a hard limit
    _within_the_teams_share(adapter.model.owner_team)
    job = MergeJob.objects.create(adapter=adapter, owner_team=adapter.model.owner_team, created_by=actor.user)
    audit.record(actor, "model_version.merge_start", job, after=job.snapshot())
    transaction.on_commit(lambda: enqueue(job.pk))
    base = adapter.base_version
    assert base is not None
    return merging.MergeStarted(
        id=job.pk,
        status=job.status,
        message=(
            f"Merging {adapter.label} into {base.label} (merge #{job.pk}): the merged version appears among "
            f"{adapter.model.name}'s versions when it is ready, and is served without LoRA."
        ),
    )


def _within_the_teams_share(team: Team) -> None:
    """A merge holds a long control worker for hours at most, and those workers run every team's eval runs,
    imports and ingests: a team keeps ``MERGES_PER_TEAM`` in flight, counted under its row's lock. Found by
    review: one team merging each of its adapters filled the workers, and other teams' queued eval runs
    and merges were failed as lost."""
    Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()
    in_flight = MergeJob.objects.filter(owner_team=team, status__in=IN_FLIGHT).count()
    if in_flight >= settings.MERGES_PER_TEAM:
        raise Conflict(
            f"{team.name} has {in_flight} merge(s) queued or running, the most at once "
            f"({settings.MERGES_PER_TEAM}); start this one when one of them ends."
        )


def enqueue(job_id: int) -> None:
    """To the control queue, by the task's name (the task module builds on this one)."""
    current_app.signature("training.merge_adapter", args=[job_id]).apply_async()


# A merge that errored keeps its traceback, and one that failed its process's log above the reason: the
# node's paths and the libraries' output, for those who run the team's training (``training.run``), as a
# fine-tune's are (``services.job_detail_for``). Other readers, and every reader of a shared adapter's page,
# get the reason only.
ERRORED_FOR_READERS = (
    "The merge errored: a bug, not a problem of the adapter. Its traceback is shown to those who run the "
    "team's training."
)


def _reason(job: MergeJob) -> str:
    if job.status == JobStatus.ERRORED:
        return ERRORED_FOR_READERS
    return job.status_detail.splitlines()[-1] if job.status_detail else ""


def detail_for(actor: Actor, job: MergeJob) -> str:
    if job.status in (JobStatus.ERRORED, JobStatus.FAILED) and not gate.can(actor, "training.run", job):
        return _reason(job)
    return job.status_detail


def notes(adapter: ModelVersion) -> list[str]:
    """``MERGE_NOTES``: the adapter's merge under way, or its last merge if that one failed."""
    job = MergeJob.objects.filter(adapter=adapter).select_related("output_version").first()
    if job is None or job.status == JobStatus.SUCCEEDED:
        return []
    if job.status in IN_FLIGHT:
        return [f"Merge #{job.pk} is {job.status}: the merged version appears here when it is ready."]
    return [f"Merge #{job.pk} {job.status}: {_reason(job)}"]


def _finish(
    job_id: int,
    status: str,
    detail: str,
    output_version: ModelVersion | None = None,
    *,
    was: str = JobStatus.RUNNING,
) -> bool:
    """Compare-and-swap from ``was`` (running), with the audit row of a failure in the same transaction."""
    with transaction.atomic():
        updated = MergeJob.objects.filter(pk=job_id, status=was).update(
            status=status,
            status_detail=detail[:4000],
            finished_at=timezone.now(),
            output_version=output_version,
        )
        if updated and status != JobStatus.SUCCEEDED:
            job = MergeJob.objects.select_related("adapter__model", "adapter__base_version__model").get(
                pk=job_id
            )
            audit.record(Actor.for_system(SYSTEM), "model_version.merge_failed", job, after=job.snapshot())
    return bool(updated)


def claim(job_id: int) -> MergeJob | None:
    """Queued -> running, for the control task about to start the merge process; None if it was not queued
    (a redelivered task finds it claimed). Notes this machine's node, when it is one: billed on its pool."""
    from serving.models import Node

    now = timezone.now()
    node = Node.objects.filter(name=settings.NODE_NAME).first()
    claimed = MergeJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, node=node
    )
    if not claimed:
        return None
    return MergeJob.objects.select_related("owner_team", "node__pool").get(pk=job_id)


def beat(job_id: int) -> bool:
    """The watcher's heartbeat while the merge process runs; False once the job has ended."""
    return bool(
        MergeJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
    )


def _note_upload(job_id: int, written: Written) -> None:
    """Before each write to the store, what the merge has written so far: a failure deletes it, even one
    that killed the process halfway."""
    MergeJob.objects.filter(pk=job_id).update(upload=written.as_json())


def discard_upload(job_id: int) -> list[str]:
    """Delete from the store what a merge that did not succeed wrote there (unless a recorded artifact uses
    it); the blobs deleted. Idempotent: the merge process, its watcher and the reaper may each call it."""
    from portfolio.registry.pending_writes import discard_unrecorded
    from portfolio.registry.stores import default_store

    unfinished = MergeJob.objects.filter(pk=job_id).exclude(status=JobStatus.SUCCEEDED)
    written = Written.from_json(unfinished.values_list("upload", flat=True).first() or {})
    if not written.blobs and not written.manifest:
        return []
    deleted = discard_unrecorded(default_store(), written)
    unfinished.update(upload={})
    return deleted


def work_prefix(job_id: int) -> str:
    """How a merge's work folder (under ``DATA_DIR/work``) is named: ``remove_work`` finds it by this."""
    return f"merge-{job_id}-"


def remove_work(job_id: int) -> None:
    """The merge's work folder (the merged full-size weights): the merge process removes its own as it ends,
    even when stopped by SIGTERM (``training.merges.runner``), but one killed outright (SIGKILL after the
    grace, the OOM killer, ``training.orphans``) leaves it on the disk."""
    for folder in (Path(settings.DATA_DIR) / "work").glob(f"{work_prefix(job_id)}*"):
        shutil.rmtree(folder, ignore_errors=True)


def compute(job_id: int) -> str | None:
    """The merge itself, in the merge process: load, merge, store, register; its final status (None: ended
    by someone else meanwhile, nothing registered). Nothing it wrote to the store stays unless it is
    registered."""
    from portfolio.registry import blobclaims
    from portfolio.registry.artifacts import materialize_version
    from portfolio.registry.inspection import inspect_directory
    from portfolio.registry.storage import store_directory
    from portfolio.registry.stores import default_store
    from training.merges.weights import merge_directory

    job = MergeJob.objects.select_related("adapter__model", "adapter__base_version").get(pk=job_id)
    if job.status != JobStatus.RUNNING:
        return None
    adapter = job.adapter
    try:
        base = merging.check_mergeable(adapter)
        base_dir, adapter_dir = materialize_version(base), materialize_version(adapter)
        work_root = Path(settings.DATA_DIR) / "work"
        work_root.mkdir(parents=True, exist_ok=True)
        # What it finds stored stays there until its version is recorded (or it fails).
        with blobclaims.registering():
            with tempfile.TemporaryDirectory(dir=work_root, prefix=work_prefix(job_id)) as work:
                output = Path(work) / "merged"
                print(f"merging {adapter.label} into {base.label}", flush=True)
                merge_directory(base_dir, adapter_dir, output)
                facts = inspect_directory(output)
                store = default_store()
                manifest = store_directory(
                    store, output, before_write=lambda written: _note_upload(job_id, written)
                )
            with transaction.atomic():
                version = merging.register_merged_version(
                    actor=Actor.for_system(SYSTEM),
                    adapter=adapter,
                    manifest=manifest,
                    facts=facts,
                    store_uri=store.uri(manifest.artifact_id),
                    job_ref=f"merge:{job_id}",
                )
                if not _finish(job_id, JobStatus.SUCCEEDED, f"Registered {version.label}.", version):
                    raise _Abandoned
        print(f"registered {version.label}", flush=True)
        return JobStatus.SUCCEEDED
    except _Abandoned:
        discard_upload(job_id)
        return None
    except (DomainError, CorruptArtifact, InspectionError, ValueError, OSError) as exc:
        # Known refusals (the adapter archived meanwhile, damaged files, an adapter peft cannot load).
        outcome = JobStatus.FAILED, f"{exc.__class__.__name__}: {exc}"
    except Exception:
        outcome = JobStatus.ERRORED, traceback.format_exc()[-4000:]
    # None when the reaper ended it meanwhile (and removed its work folder, which may be why it failed).
    ended_here = _finish(job_id, *outcome)
    discard_upload(job_id)
    return outcome[0] if ended_here else None


def ended(job_id: int, seconds: float, why: str, log: str = "") -> str:
    """The merge process is gone after ``seconds``: its compute recorded on the job and billed; the job
    failed with ``why`` (the log's tail above it) unless the process ended it; what it wrote to the store
    deleted unless it succeeded, and what it left in its work folder whatever its outcome. The job's final
    status."""
    from training import metering

    remove_work(job_id)  # first: the disk freed even if the database fails below

    job = MergeJob.objects.select_related("node").get(pk=job_id)
    cores = job.node.cpu_cores if job.node else (psutil.cpu_count() or 1)
    MergeJob.objects.filter(pk=job_id).update(
        compute_seconds=F("compute_seconds") + seconds,
        cpu_core_seconds=F("cpu_core_seconds") + seconds * cores,
    )
    metering.merge_ended(job_id, timezone.now())
    # The reason last: the adapter's page shows a failed merge's last line.
    _finish(job_id, JobStatus.FAILED, f"{log.rstrip()[-3000:]}\n{why}".lstrip())
    status = MergeJob.objects.values_list("status", flat=True).get(pk=job_id)
    if status != JobStatus.SUCCEEDED:
        discard_upload(job_id)
    return status


def reap_stale(silence: timedelta) -> list[int]:
    """Running merges whose watcher stopped beating are failed with the reason, never left running; their
    compute is billed up to the last beat, what they wrote to the store is deleted, and so is their work
    folder when it is on this machine. A merge its process ended with no watcher left has its compute closed
    at its end. Queued ones no worker took up within ``MERGE_QUEUED_AFTER_SECONDS`` are failed too."""
    from training import metering

    cutoff = timezone.now() - silence
    reaped = []
    for job_id, last_seen in MergeJob.objects.filter(
        status=JobStatus.RUNNING, heartbeat_at__lt=cutoff
    ).values_list("pk", "heartbeat_at"):
        seconds = int(silence.total_seconds())
        if _finish(job_id, JobStatus.FAILED, f"Its worker stopped for over {seconds}s; merge again."):
            metering.merge_ended(job_id, last_seen or timezone.now())
            discard_upload(job_id)
            remove_work(job_id)  # its process stopped with its watcher (``training.orphans``), leaving it
            reaped.append(job_id)
    # Ended by its process with no watcher left to see the process end (its worker died, or a beat failed
    # and ended the task): billed up to its end, not for ever.
    ended = MergeJob.objects.filter(pk__in=metering.open_merges(), finished_at__lt=cutoff)
    for job_id, finished_at in ended.values_list("pk", "finished_at"):
        metering.merge_ended(job_id, finished_at or timezone.now())  # never None: filtered on it
    return reaped + _waited_too_long(timezone.now(), timedelta(seconds=settings.MERGE_QUEUED_AFTER_SECONDS))


# Sent again each MERGE_QUEUED_AFTER_SECONDS while queued; failed once queued this many times as long.
GIVE_UP_AFTER_SENDS = 6


def _waited_too_long(now, queued_after: timedelta) -> list[int]:
    """Queued merges none took up: sent again, failed after ``GIVE_UP_AFTER_SENDS`` times ``queued_after``
    (``long_queue``); a queued merge refuses every other merge of its adapter."""
    return long_queue.resend_or_give_up(
        MergeJob.objects.filter(status=JobStatus.QUEUED),
        label="merge",
        now=now,
        queued_after=queued_after,
        give_up_after=GIVE_UP_AFTER_SENDS * queued_after,
        send=enqueue,
        fail=lambda job_id, reason: _finish(job_id, JobStatus.FAILED, reason, was=JobStatus.QUEUED),
        advice="merge again.",
    )
