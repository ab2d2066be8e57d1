"""No ingest stays queued or running for ever: a silent one is sent again and made by the next run; one that
has not finished in a day is given up with the reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.leases import Lease
from tests.training.conftest import jsonl, tickets
from training import ingest, services, tasks
from training.choices import JobStatus
from training.models import DatasetIngest, DatasetVersion

pytestmark = pytest.mark.django_db


def upload(engineer, chat_set, *, age: timedelta, **state) -> DatasetIngest:
    pending = services.upload_version(
        actor=engineer, dataset=chat_set, chunks=[jsonl(*tickets(30))], filename="rows.jsonl", enqueue=False
    )
    DatasetIngest.objects.filter(pk=pending.pk).update(created_at=timezone.now() - age, **state)
    pending.refresh_from_db()
    return pending


def test_an_ingest_whose_message_was_lost_is_sent_again_and_made_by_the_next_run(engineer, chat_set, sent):
    lost = upload(engineer, chat_set, age=timedelta(minutes=11))
    assert ingest.reap_stale() == ([lost.pk], [])
    assert sent == [("training.ingest_dataset", (lost.pk,))]
    tasks.ingest_dataset(lost.pk)
    lost.refresh_from_db()
    assert lost.status == JobStatus.SUCCEEDED and lost.version == DatasetVersion.objects.get()


def test_a_running_ingest_whose_worker_died_starts_over_from_its_stored_upload(engineer, chat_set, sent):
    silent = timezone.now() - timedelta(minutes=11)
    dead = upload(
        engineer,
        chat_set,
        age=timedelta(minutes=20),
        status=JobStatus.RUNNING,
        heartbeat_at=silent,
        progress=40,
    )
    assert ingest.reap_stale() == ([dead.pk], [])
    tasks.ingest_dataset(dead.pk)
    dead.refresh_from_db()
    assert (dead.status, dead.progress, dead.rows_done) == (JobStatus.SUCCEEDED, 100, 30)


def test_ingests_with_a_recent_sign_of_life_are_left_alone(engineer, chat_set, sent):
    upload(engineer, chat_set, age=timedelta(minutes=2))
    upload(
        engineer,
        chat_set,
        age=timedelta(hours=2),
        status=JobStatus.RUNNING,
        heartbeat_at=timezone.now() - timedelta(seconds=30),
    )
    finished = upload(engineer, chat_set, age=timedelta(hours=2), status=JobStatus.FAILED)
    assert ingest.reap_stale() == ([], [])
    assert sent == []
    finished.refresh_from_db()
    assert finished.status == JobStatus.FAILED


def test_an_ingest_unfinished_after_a_day_is_given_up_with_the_reason_and_its_upload_deleted(
    engineer, chat_set, sent
):
    stuck = upload(engineer, chat_set, age=timedelta(hours=25), status=JobStatus.RUNNING)
    assert Path(stuck.upload_path).exists()
    assert ingest.reap_stale() == ([], [stuck.pk])
    stuck.refresh_from_db()
    assert stuck.status == JobStatus.ERRORED and "did not finish within 24 h" in stuck.status_detail
    assert stuck.finished_at is not None and not Path(stuck.upload_path).exists()
    assert sent == []


def test_the_reaper_runs_on_the_beat(settings):
    assert settings.CELERY_BEAT_SCHEDULE["training-reap-ingests"]["task"] == "training.reap_stale_ingests"


def test_an_ingest_whose_worker_keeps_dying_is_given_up_after_its_resends(engineer, chat_set, sent):
    """A file that kills its worker (out of memory) was sent again every ten minutes for a day; each resend
    now counts from its own time, each restart it brings is counted, and after MAX_RESENDS the ingest is
    errored with the reason."""
    dying = upload(engineer, chat_set, age=timedelta(hours=2), status=JobStatus.RUNNING)
    for n in range(ingest.MAX_RESENDS):
        DatasetIngest.objects.filter(pk=dying.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=11))
        assert ingest.reap_stale() == ([dying.pk], [])
        assert ingest.reap_stale() == ([], []), "a minute later: not sent again before it could start"
        assert ingest.claim(dying.pk)  # the resend is delivered, and its worker dies again
        dying.refresh_from_db()
        assert dying.resends == n + 1, "the reaper and the restart it brought count one death once"
    DatasetIngest.objects.filter(pk=dying.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=11))
    leftover = Path(settings.DATA_DIR) / "work" / f"dataset-ingest-{dying.pk}-killed"
    leftover.mkdir(parents=True)  # what the last killed run left
    assert ingest.reap_stale() == ([], [dying.pk])
    dying.refresh_from_db()
    assert dying.status == JobStatus.ERRORED and "started 4 times" in dying.status_detail
    assert not Path(dying.upload_path).exists() and len(sent) == ingest.MAX_RESENDS
    assert not leftover.exists()


def test_a_queued_ingest_waiting_for_busy_workers_or_a_live_silent_run_is_not_given_up(
    engineer, chat_set, sent
):
    """Only a run that died counts: one still queued (the workers busy with a long fine-tune) is sent again
    without counting, and a run whose lease is live (storing a large file says nothing) is left alone."""
    waiting = upload(engineer, chat_set, age=timedelta(hours=2))
    live = upload(engineer, chat_set, age=timedelta(hours=2), status=JobStatus.RUNNING)
    lease = Lease(f"training.ingest_dataset:{live.pk}")  # as the running task holds it
    assert lease.acquire(wait=False)
    try:
        for _ in range(ingest.MAX_RESENDS + 2):
            silent = timezone.now() - timedelta(minutes=11)
            DatasetIngest.objects.filter(pk__in=[waiting.pk, live.pk]).update(heartbeat_at=silent)
            assert ingest.reap_stale() == ([waiting.pk], [])
    finally:
        lease.release()
    waiting.refresh_from_db()
    live.refresh_from_db()
    assert (waiting.status, waiting.resends, live.status) == (JobStatus.QUEUED, 0, JobStatus.RUNNING)
