"""After a worker or container restart, a redelivered job adopts its trainer by the pid it recorded; the pid
may have been reused by another job's trainer meanwhile. The job adopts only a trainer whose argv names it
(``python -m training.runner <its id>``), so it neither looks alive on another's process nor kills it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.utils import timezone

from training import tasks
from training.choices import JobStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def other_trainer():
    """Job 99's trainer as ``ps`` sees it: an argv ending ``training.runner 99``."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "training.runner", "99"],
        start_new_session=True,  # as _start_child: a kill of its group touches nothing else
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_a_pid_reused_by_another_jobs_trainer_is_not_taken_for_this_jobs_trainer(make_job, other_trainer):
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    assert job.pk != 99
    assert tasks._alive(other_trainer.pid, 99)
    assert not tasks._alive(other_trainer.pid, job.pk)


def test_a_redelivered_job_does_not_adopt_nor_cancel_another_jobs_trainer_on_its_old_pid(
    make_job, other_trainer, settings
):
    settings.TRAINING_HEARTBEAT_SECONDS = 0  # an adopting watcher would beat, and act on the cancel, at once
    job = make_job(
        status=JobStatus.RUNNING,
        attempt=1,
        pid=other_trainer.pid,
        heartbeat_at=timezone.now(),
        cancel_requested=True,
    )
    tasks.run_job(job.pk)
    assert other_trainer.poll() is None, "another job's trainer was stopped by this job's cancel"
    job.refresh_from_db()
    assert (job.status, job.attempt) == (JobStatus.RUNNING, 1)  # left to the reaper: its trainer is gone
