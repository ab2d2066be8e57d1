"""A fine-tune's output is in use while the job is in flight: ``register_output`` makes it ready before the
job has scored its held-out rows, and a requeued attempt reads its files again to score them. Archived and
purged meanwhile, that attempt would find its own version's files gone."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from portfolio.registry import services as registry
from portfolio.registry.choices import VersionStatus
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.QUEUED])
def test_the_output_of_a_job_still_in_flight_cannot_be_archived(finished_job, engineer, status):
    FineTuneJob.objects.filter(pk=finished_job.pk).update(status=status, finished_at=None)
    tuned = finished_job.output_version
    with pytest.raises(Conflict, match=f"fine-tune #{finished_job.pk} is using it"):
        registry.archive_version(actor=engineer, version=tuned)
    tuned.refresh_from_db()
    assert tuned.status == VersionStatus.READY


def test_the_output_of_a_job_that_ended_can_be_archived(finished_job, engineer):
    archived = registry.archive_version(actor=engineer, version=finished_job.output_version)
    assert archived.status == VersionStatus.ARCHIVED
