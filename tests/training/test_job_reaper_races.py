"""The reaper ends only what is still silent when it ends it: a worker that heart-beat after the reaper
listed its job as silent keeps it running (it was failed or cancelled anyway, its trainer still training),
and a queued job whose node came back after the reaper listed it keeps waiting for its worker.

The race is played on the reaper's own connection: right after its list query runs, the worker's
heartbeat (or the node's return) is written, as another process would write it at that moment."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from serving.choices import NodeState
from serving.models import Node
from training import job_reaper
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db

SILENCE = timedelta(minutes=2)


@contextlib.contextmanager
def after_first_query(marker: str, then):
    """Runs ``then()`` once, just after the first query whose SQL contains ``marker`` (and no row lock)."""
    done = [False]

    def wrapper(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not done[0] and marker in sql and "FOR UPDATE" not in sql:
            done[0] = True
            then()
        return result

    with connection.execute_wrapper(wrapper):
        yield done
    assert done[0], "the reaper never ran the query the race follows"


@pytest.fixture
def silent_job(make_job):
    return make_job(
        status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now() - timedelta(hours=1), step=7
    )


def _heartbeat(job: FineTuneJob):
    return lambda: FineTuneJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())


@pytest.mark.parametrize("why", ["cancel asked", "last attempt", "cannot move"])
def test_a_job_that_heart_beat_after_the_reaper_listed_it_is_left_running(silent_job, settings, why):
    if why == "cancel asked":
        FineTuneJob.objects.filter(pk=silent_job.pk).update(cancel_requested=True)
    elif why == "last attempt":
        settings.TRAINING_MAX_ATTEMPTS = 1
    else:  # its pool has no ready node to move it to
        Node.objects.filter(pool=silent_job.pool).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with after_first_query('"heartbeat_at" <', _heartbeat(silent_job)):
        job_reaper.reap_stale_jobs(SILENCE)
    silent_job.refresh_from_db()
    assert (silent_job.status, silent_job.finished_at, silent_job.status_detail) == (
        JobStatus.RUNNING,
        None,
        "",
    )
    assert not AuditEvent.objects.filter(action__startswith="training.job_").exists()


@pytest.mark.parametrize("why", ["cancel asked", "last attempt", "cannot move"])
def test_a_job_still_silent_is_ended_with_the_reason(silent_job, settings, why):
    if why == "cancel asked":
        FineTuneJob.objects.filter(pk=silent_job.pk).update(cancel_requested=True)
    elif why == "last attempt":
        settings.TRAINING_MAX_ATTEMPTS = 1
    else:
        Node.objects.filter(pool=silent_job.pool).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert job_reaper.reap_stale_jobs(SILENCE) == 1
    silent_job.refresh_from_db()
    expected = {
        "cancel asked": (JobStatus.CANCELLED, "its node had stopped reporting"),
        "last attempt": (JobStatus.FAILED, "giving up"),
        "cannot move": (JobStatus.FAILED, "the job cannot move"),
    }[why]
    assert silent_job.status == expected[0] and expected[1] in silent_job.status_detail
    assert AuditEvent.objects.filter(
        object_id=str(silent_job.pk), action=f"training.job_{expected[0]}"
    ).exists()


def test_a_queued_job_whose_node_came_back_after_the_reaper_listed_it_keeps_waiting(make_job):
    job = make_job()  # queued on node-a
    Node.objects.filter(pk=job.node_id).update(state=NodeState.LOST)

    def back():
        Node.objects.filter(pk=job.node_id).update(state=NodeState.READY)

    with after_first_query('"state" =', back):
        assert job_reaper.reap_stale_jobs(SILENCE) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.finished_at is None
