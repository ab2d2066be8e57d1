"""The training compute meter: each attempt of a fine-tune or distillation job is one interval of billing's
ledger, charged to the job's owning team on its pool, from its claim to its end (or, for a node gone silent,
to its last heartbeat), idempotently under the attempt's key."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.billing.choices import ComputeKind
from portfolio.billing.models import ComputeInterval
from serving.choices import PoolKind
from serving.models import ComputePool, Endpoint, Node
from training import finetune, job_reaper, metering
from training.choices import JobStatus
from training.models import FineTuneJob
from training.tasks import run_job


def _intervals(job: FineTuneJob) -> list[ComputeInterval]:
    return list(ComputeInterval.objects.filter(key__startswith="job:", key__contains=f":{job.pk}:"))


def _running(job: FineTuneJob, *, attempt: int = 1, silent_for: timedelta = timedelta(0)) -> FineTuneJob:
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, attempt=attempt, heartbeat_at=timezone.now() - silent_for
    )
    job.refresh_from_db()
    return job


@pytest.mark.django_db(transaction=True)
def test_a_jobs_run_on_its_node_is_one_interval_from_its_claim_to_its_end_charged_to_its_team(make_job, team):
    job = make_job()
    run_job(job.pk)  # the stand-in base version has no weights: the trainer ends, and says so
    job.refresh_from_db()
    assert job.status in JobStatus.finished()
    (run,) = _intervals(job)
    assert run.key == f"job:finetune:{job.pk}:1"
    assert (run.kind, run.team_id, run.department_id, run.subject) == (
        ComputeKind.JOB,
        team.pk,
        team.department_id,
        f"fine-tune #{job.pk}",
    )
    assert (run.pool_id, run.pool, run.gpus, run.cpu_cores, run.memory_bytes) == (job.pool_id, "cpu", 0, 4, 0)
    assert run.started_at == job.started_at and run.ended_at == job.finished_at


@pytest.mark.django_db
def test_finishing_a_job_ends_its_attempt_and_a_second_start_of_it_changes_nothing(make_job):
    job = _running(make_job())
    began = timezone.now() - timedelta(minutes=10)
    metering.attempt_started(job, began)
    metering.attempt_started(job, timezone.now())  # a redelivery: the same attempt, already metered
    assert finetune.finish(job.pk, JobStatus.SUCCEEDED)
    job.refresh_from_db()
    (run,) = _intervals(job)
    assert (run.started_at, run.ended_at) == (began, job.finished_at)


@pytest.mark.django_db
def test_an_attempt_on_a_node_gone_silent_is_metered_to_its_last_heartbeat_and_the_next_is_a_new_one(
    make_job, enqueued
):
    job = _running(make_job(), silent_for=timedelta(minutes=30))
    metering.attempt_started(job, job.heartbeat_at - timedelta(hours=1))
    assert job_reaper.reap_stale_jobs(timedelta(minutes=5)) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    (first,) = _intervals(job)
    assert first.ended_at == job.heartbeat_at

    job = _running(job, attempt=2)
    metering.attempt_started(job, timezone.now())
    assert finetune.finish(job.pk, JobStatus.FAILED, "gave up")
    keys = {run.key: run.ended_at is not None for run in _intervals(job)}
    assert keys == {f"job:finetune:{job.pk}:1": True, f"job:finetune:{job.pk}:2": True}


@pytest.mark.django_db
def test_a_job_given_up_after_its_last_attempt_is_metered_to_its_last_heartbeat(make_job, settings):
    job = _running(make_job(), attempt=settings.TRAINING_MAX_ATTEMPTS, silent_for=timedelta(minutes=30))
    metering.attempt_started(job, job.heartbeat_at - timedelta(hours=1))
    job_reaper.reap_stale_jobs(timedelta(minutes=5))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    (run,) = _intervals(job)
    assert run.ended_at == job.heartbeat_at


@pytest.mark.django_db
def test_a_distillation_on_a_gpu_pool_is_metered_by_the_gpus_it_claims(make_job, team, org):
    pool = ComputePool.objects.create(name="gpu", kind=PoolKind.GPU)
    node = Node.objects.create(name="gpu-a", pool=pool, address="127.0.0.1", cpu_cores=32, memory_bytes=2**36)
    job = make_job(pool=pool, node=node, gpu_indices=[3])
    teacher = Endpoint.objects.create(name="teacher", owner_team=team)
    FineTuneJob.objects.filter(pk=job.pk).update(teacher_endpoint=teacher)
    job = _running(job)
    metering.attempt_started(job, timezone.now())
    (run,) = _intervals(job)
    assert run.key == f"job:distillation:{job.pk}:1" and run.subject == f"distillation #{job.pk}"
    assert (run.pool, run.gpus, run.cpu_cores, run.memory_bytes) == ("gpu", 1, 0, 0)
