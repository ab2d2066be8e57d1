"""A job whose version was registered ends succeeded and says what did not finish, however its attempt then
stops: its node gone silent (on the last attempt, with a cancel asked, or with nowhere to move), its trainer
exiting on the last attempt or with a cancel asked, a cancel arriving while it scores, or its node lost
while it waits to be scored. The version stands ready (found by review: the job ended failed or cancelled
beside it). Its compute is metered as any ended attempt's: to its last heartbeat, for a silent node."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.billing.models import ComputeInterval
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving.choices import NodeState
from serving.models import Node
from training import job_reaper, metering, tasks
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db

SILENCE = timedelta(minutes=2)


@pytest.fixture
def registered(make_job, base, settings):
    """Attempt 3 of 3 of a job whose trainer registered v2 of its model and had yet to score it."""
    settings.TRAINING_MAX_ATTEMPTS = 3
    tuned = ModelVersion.objects.create(
        model=base.model,
        number=2,
        kind=VersionKind.ADAPTER,
        base_version=base,
        source=Source.FINE_TUNE,
        status=VersionStatus.READY,
    )
    job = make_job()
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        attempt=3,
        output_version=tuned,
        metrics={"train_loss_last": 0.12},
        step=40,
        total_steps=40,
        heartbeat_at=timezone.now() - timedelta(hours=1),
    )
    job.refresh_from_db()
    return job


def _ended_succeeded(job: FineTuneJob, why: str) -> FineTuneJob:
    job = FineTuneJob.objects.select_related("output_version__model").get(pk=job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.status_detail
    assert job.status_detail.startswith(f"Registered {job.output_version.label}; scoring it did not finish: ")
    assert why in job.status_detail
    assert job.output_version.status == VersionStatus.READY and job.metrics == {"train_loss_last": 0.12}
    assert job.finished_at is not None and job.pid is None
    assert AuditEvent.objects.filter(action="training.job_succeeded").count() == 1
    assert not AuditEvent.objects.filter(
        action__in=["training.job_failed", "training.job_cancelled"]
    ).exists()
    return job


@pytest.mark.parametrize(
    "why", ["the node stopped reporting", "cancelled; its node had stopped reporting", "the job cannot move"]
)
def test_a_silent_job_whose_version_was_registered_is_ended_succeeded_by_the_reaper(registered, why):
    if why.startswith("cancelled"):
        FineTuneJob.objects.filter(pk=registered.pk).update(cancel_requested=True)
    elif why == "the job cannot move":
        FineTuneJob.objects.filter(pk=registered.pk).update(attempt=1)  # not the last: moved if it could
        registered.attempt = 1
        Node.objects.filter(pool=registered.pool).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    metering.attempt_started(registered, registered.heartbeat_at - timedelta(hours=1))

    assert job_reaper.reap_stale_jobs(SILENCE) == 1

    job = _ended_succeeded(registered, why)
    # Billed as every silent attempt is: up to the last time the job was seen alive.
    (interval,) = ComputeInterval.objects.filter(key=metering.key(job, registered.attempt))
    assert interval.ended_at == registered.heartbeat_at


class _Exited:
    returncode = -9


@pytest.mark.parametrize("cancel", [False, True])
def test_a_trainer_that_exits_after_registering_ends_the_job_succeeded(registered, cancel):
    FineTuneJob.objects.filter(pk=registered.pk).update(heartbeat_at=timezone.now(), cancel_requested=cancel)
    metering.attempt_started(registered, timezone.now() - timedelta(minutes=5))
    mine = FineTuneJob.objects.filter(pk=registered.pk, status=JobStatus.RUNNING, attempt=3)

    tasks._end_attempt(registered.pk, 3, _Exited(), mine)

    job = _ended_succeeded(
        registered, "cancelled; the trainer exited" if cancel else "(signal 9) on attempt 3"
    )
    (interval,) = ComputeInterval.objects.filter(key=metering.key(job, 3))
    assert interval.ended_at is not None and interval.ended_at <= job.finished_at


def test_an_attempt_before_the_last_that_registered_is_still_requeued_to_score_it(registered, enqueued):
    FineTuneJob.objects.filter(pk=registered.pk).update(attempt=1, heartbeat_at=timezone.now())
    mine = FineTuneJob.objects.filter(pk=registered.pk, status=JobStatus.RUNNING, attempt=1)

    tasks._end_attempt(registered.pk, 1, _Exited(), mine)

    registered.refresh_from_db()
    assert registered.status == JobStatus.QUEUED and [job.pk for job in enqueued] == [registered.pk]


def test_a_cancel_arriving_while_the_registered_version_is_scored_ends_the_job_succeeded(
    registered, monkeypatch
):
    FineTuneJob.objects.filter(pk=registered.pk).update(cancel_requested=True, pid=4242)
    stopped = []
    monkeypatch.setattr(tasks, "_kill", lambda pid, grace=10.0, process=None: stopped.append(pid))
    mine = FineTuneJob.objects.filter(pk=registered.pk, status=JobStatus.RUNNING, attempt=3)

    assert tasks._beat(registered.pk, mine, 3, 4242, None) is False

    assert stopped == [4242]
    _ended_succeeded(registered, "cancelled: the trainer's process group was stopped")


def test_a_job_waiting_to_score_its_version_on_a_node_lost_ends_succeeded(registered):
    FineTuneJob.objects.filter(pk=registered.pk).update(status=JobStatus.QUEUED, pid=None)
    Node.objects.filter(pk=registered.node_id).update(state=NodeState.LOST)

    assert job_reaper.reap_stale_jobs(SILENCE) == 1

    _ended_succeeded(registered, "was lost before the job started again")


def test_a_job_that_registered_nothing_still_fails_on_its_last_attempt(registered):
    FineTuneJob.objects.filter(pk=registered.pk).update(output_version=None)

    assert job_reaper.reap_stale_jobs(SILENCE) == 1

    registered.refresh_from_db()
    assert registered.status == JobStatus.FAILED and "giving up" in registered.status_detail
