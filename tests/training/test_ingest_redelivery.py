"""An ingest under redelivery: a run whose worker keeps dying is counted and given up, what a killed run left
in the work folder is removed, and a duplicate of a live or finished ingest returns at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.conf import settings

from portfolio.leases import Lease
from tests.training.conftest import jsonl, tickets
from training import ingest, services, tasks
from training.choices import JobStatus
from training.models import DatasetIngest, DatasetVersion

pytestmark = pytest.mark.django_db


def queue_upload(actor, dataset) -> DatasetIngest:
    return services.upload_version(
        actor=actor, dataset=dataset, chunks=[jsonl(*tickets(12))], filename="rows.jsonl", enqueue=False
    )


def left_by_a_killed_run(name: str) -> Path:
    folder = Path(settings.DATA_DIR) / "work" / name
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "original.jsonl").write_bytes(b"{}\n")
    return folder


def test_an_ingest_whose_worker_is_killed_at_each_redelivery_is_errored_and_its_upload_deleted(
    engineer, chat_set
):
    """Celery requeues a killed worker's task at once and the redelivery takes over the dead holder's lease:
    each start after the first is counted, and the one past MAX_RESENDS is refused."""
    dying = queue_upload(engineer, chat_set)
    for _ in range(ingest.MAX_RESENDS + 1):  # the first start, then each redelivery, killed in turn
        assert ingest.claim(dying.pk)
    leftover = left_by_a_killed_run(f"dataset-ingest-{dying.pk}-killed")
    tasks.ingest_dataset(dying.pk)
    dying.refresh_from_db()
    assert dying.status == JobStatus.ERRORED and "started 4 times" in dying.status_detail
    assert dying.resends == ingest.MAX_RESENDS and dying.finished_at is not None
    assert not Path(dying.upload_path).exists() and not leftover.exists()
    assert not DatasetVersion.objects.exists()


def test_a_redelivery_after_a_killed_run_starts_over_and_removes_only_that_ingests_leftover_folders(
    engineer, chat_set
):
    pending = queue_upload(engineer, chat_set)
    assert ingest.claim(pending.pk)  # it was running when its worker was killed
    leftover = left_by_a_killed_run(f"dataset-ingest-{pending.pk}-killed")
    another = left_by_a_killed_run(f"dataset-ingest-{pending.pk}0-live")  # ingest #<pk>0's, not this one's
    tasks.ingest_dataset(pending.pk)
    assert not leftover.exists() and another.exists()
    pending.refresh_from_db()
    assert (pending.status, pending.resends) == (JobStatus.SUCCEEDED, 1)


def test_a_duplicate_of_a_live_ingest_returns_at_once_and_leaves_it_alone(engineer, chat_set):
    live = queue_upload(engineer, chat_set)
    lease = ingest.lease_of(live.pk)  # as the live run holds it (a full expiry: the default lease)
    assert lease.acquire(wait=False)
    try:
        assert ingest.claim(live.pk)
        before = DatasetIngest.objects.filter(pk=live.pk).values().get()
        started = time.monotonic()
        tasks.ingest_dataset(live.pk)
        assert time.monotonic() - started < 5 < lease.seconds
        assert DatasetIngest.objects.filter(pk=live.pk).values().get() == before
        assert lease.holder() == lease.token
    finally:
        lease.release()


def test_a_duplicate_of_a_finished_ingest_returns_without_taking_its_lease(engineer, chat_set, monkeypatch):
    done = queue_upload(engineer, chat_set)
    tasks.ingest_dataset(done.pk)
    monkeypatch.setattr(Lease, "acquire", lambda *args, **kwargs: pytest.fail("took the lease"))
    tasks.ingest_dataset(done.pk)
    done.refresh_from_db()
    assert done.status == JobStatus.SUCCEEDED
