"""Queued fine-tunes whose message never reached their node: sent again.

A job is sent to its node's queue once its transaction commits (``finetune.enqueue``). A message lost on the
way (the broker down at that moment, a purged queue) left the job queued for ever on a live node, holding its
GPUs from every replica and job, until someone cancelled it. A job still queued ``RESEND_AFTER`` after it was
last sent goes to its node's queue again, less often the longer it waits: its node's worker may only be busy.

Copies are harmless: ``run_job`` claims a queued job once (a compare-and-swap), a later copy finds it running
and leaves it to its watcher, and a node agent starts only jobs placed on its own node. While a job is
queued its ``heartbeat_at`` says when it was last sent (a run sets it anew when it claims the job).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone

from serving.choices import NodeState
from training import finetune
from training.choices import JobStatus
from training.models import FineTuneJob

logger = logging.getLogger(__name__)
# Each copy a worker takes up after the job was claimed waits out the watcher's lease (TASK_LEASE_SECONDS,
# 30 s) before leaving it: copies are kept few.
RESEND_AFTER = timedelta(hours=1)


def resend(now: datetime | None = None) -> list[int]:
    """Send again the queued jobs not taken up since they were last sent (at least ``RESEND_AFTER``, and a
    quarter of their age: about 10 copies in a day); the ids sent. Jobs on a lost node are failed by the
    reaper instead (``job_reaper.reap_stale_jobs``)."""
    now = now or timezone.now()
    waiting = FineTuneJob.objects.filter(
        status=JobStatus.QUEUED, node__isnull=False, created_at__lt=now - RESEND_AFTER
    ).exclude(node__state=NodeState.LOST)
    resent = []
    for job_id, created_at, sent_at in waiting.order_by("pk").values_list("pk", "created_at", "heartbeat_at"):
        if (sent_at or created_at) > now - max(RESEND_AFTER, (now - created_at) / 4):
            continue
        # Counted from now, whoever else looked at it meanwhile: one copy per turn.
        if FineTuneJob.objects.filter(pk=job_id, status=JobStatus.QUEUED, heartbeat_at=sent_at).update(
            heartbeat_at=now
        ):
            job = FineTuneJob.objects.select_related("node").get(pk=job_id)
            logger.warning("fine-tune #%s still queued on %s: sent again", job_id, job.placed_on)
            finetune.enqueue(job)
            resent.append(job_id)
    return resent
