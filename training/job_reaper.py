"""The fine-tune reaper: running jobs whose node went silent are moved, failed or ended as cancelled, and
queued jobs on a node marked lost are failed; never left running or queued for ever."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
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
        finetune.finish(job.pk, JobStatus.CANCELLED, detail, attempt=job.attempt)
        return
    if job.attempt >= settings.TRAINING_MAX_ATTEMPTS:
        metering.attempt_ended(job, last_seen)
        finetune.finish(
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
        finetune.finish(job.pk, JobStatus.FAILED, detail, attempt=job.attempt)
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


def _fail_queued_on_lost_nodes() -> int:
    """A queued job waits for its node's worker: on a node marked lost it would wait for ever, holding its
    GPUs from every replica and job. It is failed (its claim given back); started again, it is placed anew.
    A worker coming back with its message finds it no longer queued."""
    failed = 0
    lost = FineTuneJob.objects.filter(status=JobStatus.QUEUED, node__state=NodeState.LOST).select_related(
        "node"
    )
    for job in lost:
        with transaction.atomic():
            assert job.node is not None  # selected by its node's state
            detail = f"Its node {job.node.name} was lost before the job started; start it again."
            # Its node still lost: one back (ready again) since the select keeps its job, which its worker runs.
            still = FineTuneJob.objects.filter(
                pk=job.pk, status=JobStatus.QUEUED, node=job.node, node__state=NodeState.LOST
            )
            if still.update(status=JobStatus.FAILED, status_detail=detail, finished_at=timezone.now()):
                job.refresh_from_db()
                audit.record(Actor.for_system("training"), "training.job_failed", job, after=job.snapshot())
                distillation.revoke_teacher_keys(job)  # a killed stage-one attempt's, as ``finish`` does
                failed += 1
        finetune.drop_checkpoint(job.pk)  # a job requeued from a checkpoint, then its new node lost
    return failed
