"""A fine-tune whose watcher task the broker hands to the worker a second time, while the first still watches
the trainer (Redis's visibility timeout, here two seconds): one watcher, compute time counted once."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from django.utils import timezone

from serving.models import Node
from tests.celery_worker import VISIBILITY_TIMEOUT, deliveries, start_worker, stop_worker, wait_for
from training import finetune
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_redelivered_watcher_leaves_the_running_job_to_the_live_one_and_time_is_counted_once(
    make_job, cpu_pool, tmp_path
):
    node = Node.objects.create(
        name=f"redelivery-{uuid.uuid4().hex[:8]}",
        pool=cpu_pool,
        address="127.0.0.1",
        cpu_cores=2,
        memory_bytes=2**34,
        heartbeat_at=timezone.now(),
    )
    job = make_job(node=node)
    log = tmp_path / "worker.log"
    worker = start_worker(f"node.{node.name}", log, PORTFOLIO_TRAINING_HEARTBEAT_SECONDS="1")
    try:
        enqueued_at = time.monotonic()
        finetune.enqueue(job)
        pid = wait_for("the trainer to start", lambda: FineTuneJob.objects.get(pk=job.pk).pid, log)
        # The trainer stands still (its process group stopped) while the broker hands the task on again.
        os.killpg(pid, signal.SIGSTOP)
        try:
            wait_for(
                "a second delivery",
                lambda: deliveries(log, "training.run_job") >= 2,
                log,
                timeout=VISIBILITY_TIMEOUT + 60,
            )
            time.sleep(5)  # what a second watcher would count twice
        finally:
            os.killpg(pid, signal.SIGCONT)
        # The stand-in base version has no weights: the trainer fails soon after it resumes.
        wait_for(
            "the trainer to end and its time to be counted",
            lambda: FineTuneJob.objects.filter(pk=job.pk, compute_seconds__gt=0).exists(),
            log,
        )
        watched = time.monotonic() - enqueued_at  # more than the watcher's own time from the start to the end
        time.sleep(3)  # a second watcher, had there been one, counts right after the trainer exits too
    finally:
        stop_worker(worker)
    job = FineTuneJob.objects.get(pk=job.pk)
    # One watcher counts less than the test waited; two would count the stop twice (at least 5 s more).
    assert 5 < job.compute_seconds < watched, (job.compute_seconds, watched)
    assert job.attempt == 1 and job.status in (JobStatus.FAILED, JobStatus.ERRORED)
    assert f"fine-tune #{job.pk} attempt 1 is watched by a live delivery" in log.read_text()
