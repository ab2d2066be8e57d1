"""An ingest whose lease lapsed while another run took it stops before it writes: the ingest, and the upload
the live run reads, are no longer its own (real Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_leases_lapsed import lapse_while_another_runs
from tests.training.conftest import jsonl, tickets
from training import ingest, services, tasks
from training.choices import JobStatus
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db


def test_an_ingest_whose_lease_lapsed_stops_without_ending_the_ingest_or_deleting_its_upload(
    settings, engineer, chat_set, monkeypatch
):
    settings.TASK_LEASE_SECONDS = 1
    pending = services.upload_version(
        actor=engineer, dataset=chat_set, chunks=[jsonl(*tickets(40))], filename="rows.jsonl", enqueue=False
    )
    prepare = ingest.prepare

    def paused_then_prepare(job, *args, **kwargs):
        lapse_while_another_runs(ingest.lease_of(job.pk).key)
        return prepare(job, *args, **kwargs)

    monkeypatch.setattr(ingest, "prepare", paused_then_prepare)
    tasks.ingest_dataset(pending.pk)

    pending.refresh_from_db()
    assert pending.status == JobStatus.RUNNING  # the live run's, or the reaper's, to end
    assert Path(pending.upload_path).exists()  # the live run reads it
    assert not DatasetVersion.objects.exists()
