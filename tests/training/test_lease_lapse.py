"""A fine-tune whose attempt's lease lapsed while its watcher lived (Redis away longer than the lease's
expiry, or restarted without its keys): the watcher takes the lease back and watches on, and the attempt ends
as its trainer's exit says (found by review: the watcher stepped aside, the sweep stopped its trainer as an
orphan and the reaper requeued it: one Redis outage cost every running fine-tune an attempt). One whose lease
another run holds now is still left to that run."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from django.utils import timezone

from portfolio.leases import Lease
from training import tasks
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db(transaction=True)
EXPIRY = 0.6  # renewed every 0.2 s


def lapse_after(lease: Lease, seconds: float, *, taken_by: Lease | None = None) -> threading.Thread:
    """The lease's key gone after ``seconds`` (and, with ``taken_by``, held by that run at once)."""

    def lapse() -> None:
        time.sleep(seconds)
        lease._client.delete(lease.key)
        if taken_by is not None:
            assert taken_by.acquire(wait=False)

    thread = threading.Thread(target=lapse)
    thread.start()
    return thread


def watch(job: FineTuneJob, lease: Lease, trainer: subprocess.Popen) -> None:
    with lease.kept():
        tasks._watch(job.pk, trainer.pid, trainer, lease, attempt=1)


@pytest.fixture
def running(make_job, settings):
    """(job, its trainer, its attempt's lease, held): a running first attempt whose trainer lives 2 s."""
    settings.TRAINING_HEARTBEAT_SECONDS = 0.2
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    trainer = subprocess.Popen(["sleep", "2"])
    FineTuneJob.objects.filter(pk=job.pk).update(pid=trainer.pid)
    lease = Lease(f"training.run_job:{job.pk}:1", seconds=EXPIRY)
    assert lease.acquire(wait=False)
    yield job, trainer, lease
    trainer.wait(timeout=10)


def test_a_watcher_whose_lease_lapsed_takes_it_back_and_ends_the_attempt(running, enqueued):
    job, trainer, lease = running
    lapsing = lapse_after(lease, 0.5)

    watch(job, lease, trainer)
    lapsing.join()

    job.refresh_from_db()
    assert (job.status, job.pid) == (JobStatus.QUEUED, None), "the watcher stepped aside"
    assert "the trainer exited" in job.status_detail and [j.pk for j in enqueued] == [job.pk]
    assert job.compute_seconds > 1.5


def test_a_watcher_whose_lease_another_run_holds_steps_aside(running, enqueued):
    job, trainer, lease = running
    other = Lease(f"training.run_job:{job.pk}:1", seconds=30)
    lapsing = lapse_after(lease, 0.5, taken_by=other)
    try:
        watch(job, lease, trainer)
        lapsing.join()
        job.refresh_from_db()
        assert (job.status, job.pid) == (JobStatus.RUNNING, trainer.pid) and enqueued == []
        assert other.holder() == other.token
    finally:
        other.release()
