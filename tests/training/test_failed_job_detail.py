"""A job whose trainer exits on its last attempt is failed with a reason every reader of the job sees: the
reason names the exit, and the trainer's last log lines (rows of the data, the node's paths) stay in the
log, which only those who run the team's fine-tunes read."""

from __future__ import annotations

import subprocess

import pytest
from django.urls import reverse
from django.utils import timezone

from training import tasks
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


def test_a_job_failed_on_its_last_attempt_keeps_its_log_from_the_jobs_readers(
    client, org, make_job, settings
):
    settings.TRAINING_MAX_ATTEMPTS = 1
    job = make_job(
        status=JobStatus.RUNNING,
        attempt=1,
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
        log_tail="row 17: my card number is 4111\n/srv/node-7/work",
    )
    exited = subprocess.Popen(["false"])
    exited.wait()

    tasks._end_attempt(job.pk, 1, exited, FineTuneJob.objects.filter(pk=job.pk, attempt=1))

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "giving up" in job.status_detail
    client.force_login(org["viewer"])
    detail = client.get(f"/api/v1/training/jobs/{job.pk}").json()["status_detail"]
    assert "exited" in detail and "4111" not in detail and "node-7" not in detail
    client.force_login(org["engineer"])
    assert "4111" in client.get(reverse("job-detail", kwargs={"job_id": job.pk})).content.decode(), (
        "the log, for who runs them"
    )
