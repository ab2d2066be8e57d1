"""The fine-tune reaper: running jobs whose node went silent are moved, failed or ended as cancelled, and
queued jobs on a node marked lost are failed; never left running or queued for ever. A job whose version was
registered ends succeeded on each of those paths, and on its watcher's (``end_unfinished``)."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict
from serving.choices import NodeState
from training import distillation, finetune, metering
from training.choices import JobStatus
from training.models import FineTuneJob


def reap_stale_jobs(silence: timedelta) -> int:
    """Running jobs whose node went silent are resumed elsewhere from their checkpoint, or failed with the
    reason after ``TRAINING_MAX_ATTEMPTS``, or cancelled if a cancel was asked meanwhile: never left
    running."""
    cutoff = timezone.now() - silence
    count = 0
    silent = FineTuneJob.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
    for seen in silent.only("pk"):
        with transaction.atomic():
            # Read again under its row lock: a worker that heart-beat since the select (or a job ended or taken
            # over meanwhile) is left alone, and cannot heartbeat until this attempt's end is committed.
            job = silent.select_for_update(of=("self",)).select_related("pool").filter(pk=seen.pk).first()
            if job is None:
                continue
            count += 1
            _reap(job, silence, cutoff)
    return count + _fail_queued_on_lost_nodes()


def _reap(job: FineTuneJob, silence: timedelta, cutoff) -> None:
    """End or move ``job``, silent since before ``cutoff`` and locked by the caller's transaction."""
    # The silent node's attempt is metered up to the last time the job was seen alive.
    last_seen = job.heartbeat_at or timezone.now()
    if job.cancel_requested:  # asked while its node was silent: nothing is left to stop, nor to move
        metering.attempt_ended(job, last_seen)
        detail = "Cancelled; its node had stopped reporting, so the job was not moved."
        end_unfinished(job.pk, JobStatus.CANCELLED, detail, attempt=job.attempt)
        return
    if job.attempt >= settings.TRAINING_MAX_ATTEMPTS:
        metering.attempt_ended(job, last_seen)
        end_unfinished(
            job.pk,
            JobStatus.FAILED,
            f"The node stopped reporting for {int(silence.total_seconds())}s {job.attempt} times; giving up.",
            attempt=job.attempt,  # the silent attempt, not a successor claimed meanwhile
        )
        return
    try:
        # Its claim on the silent node does not count: it may move to the very GPU it held.
        node, gpu_indices = finetune.placement(job.pool, job=job)
    except Conflict as exc:
        metering.attempt_ended(job, last_seen)
        detail = f"The node went silent and the job cannot move: {exc}"
        end_unfinished(job.pk, JobStatus.FAILED, detail, attempt=job.attempt)
        return
    job.node, job.gpu_indices = node, gpu_indices
    requeued = FineTuneJob.objects.filter(
        pk=job.pk, status=JobStatus.RUNNING, heartbeat_at__lt=cutoff, cancel_requested=False
    ).update(
        status=JobStatus.QUEUED,
        node=node,
        gpu_indices=gpu_indices,
        pid=None,
        status_detail=f"Node went silent; resuming from step {job.checkpoint_step} on {job.placed_on}.",
    )
    if requeued:
        metering.attempt_ended(job, last_seen)
        job.refresh_from_db()
        # A job moving to another machine is a change an auditor must see, like its start and end.
        audit.record(Actor.for_system("training"), "training.job_requeued", job, after=job.snapshot())
        transaction.on_commit(partial(finetune.enqueue, job))


def end_unfinished(job_id: int, status: str, detail: str, *, attempt: int) -> bool:
    """End the job as ``status`` (failed, cancelled) with ``detail``, the attempt having stopped before it
    ended the job; unless that attempt (or an earlier one) registered its output version: then, as a trainer
    run again after registering ends it (``runner.run``), succeeded, saying what did not finish. The version
    stands and is usable (ready, perhaps served already); a failed job would say it is not, and a new job
    would train it again. ``finetune.finish``'s compare-and-swap: False for a job ended or taken over."""
    registered = (
        FineTuneJob.objects.filter(pk=job_id, status=JobStatus.RUNNING, attempt=attempt)
        .exclude(output_version=None)
        .select_related("output_version__model")
        .first()
    )
    if registered is None or registered.output_version is None:
        return finetune.finish(job_id, status, detail, attempt=attempt)
    why = detail[:1].lower() + detail[1:]
    return finetune.finish(
        job_id,
        JobStatus.SUCCEEDED,
        f"Registered {registered.output_version.label}; scoring it did not finish: {why}",
        attempt=attempt,
        step=F("total_steps"),  # as the trainer ends it: its training was done
    )


def _fail_queued_on_lost_nodes() -> int:
    """A queued job waits for its node's worker: on a node marked lost it would wait for ever, holding its
    GPUs from every replica and job. It is failed (its claim given back); started again, it is placed anew.
    One requeued after it registered its version ends succeeded, as ``end_unfinished`` ends it. A worker
    coming back with its message finds it no longer queued."""
    ended = 0
    lost = FineTuneJob.objects.filter(status=JobStatus.QUEUED, node__state=NodeState.LOST).select_related(
        "node", "output_version__model"
    )
    for job in lost:
        with transaction.atomic():
            assert job.node is not None  # selected by its node's state
            status, fields = JobStatus.FAILED, {}
            detail = f"Its node {job.node.name} was lost before the job started; start it again."
            if job.output_version is not None:  # only scoring it was left to do
                status, fields = JobStatus.SUCCEEDED, {"step": F("total_steps")}
                detail = (
                    f"Registered {job.output_version.label}; scoring it did not finish: its node "
                    f"{job.node.name} was lost before the job started again."
                )
            # Its node still lost: one back (ready again) since the select keeps its job, which its worker runs.
            still = FineTuneJob.objects.filter(
                pk=job.pk, status=JobStatus.QUEUED, node=job.node, node__state=NodeState.LOST
            )
            if still.update(status=status, status_detail=detail, finished_at=timezone.now(), **fields):
                job.refresh_from_db()
                audit.record(
                    Actor.for_system("training"), f"training.job_{status}", job, after=job.snapshot()
                )
                distillation.revoke_teacher_keys(job)  # a killed stage-one attempt's, as ``finish`` does
                ended += 1
        finetune.drop_checkpoint(job.pk)  # a job requeued from a checkpoint, then its new node lost
    return ended
