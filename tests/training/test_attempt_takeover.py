"""A job whose node went silent is requeued by the reaper and claimed again (attempt 2), while attempt 1's
trainer and watcher may still run: from then on the job is attempt 2's. Attempt 1 writes nothing to it,
registers no version, neither ends nor requeues it, and its trainer stops at its next write."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.leases import Lease
from portfolio.registry import artifacts, inspection
from portfolio.registry.models import ModelVersion
from portfolio.registry.stores import default_store
from training import finetune, job_reaper, lora, runner, tasks
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


def taken_over(job: FineTuneJob) -> None:
    """Attempt 1 went silent; the reaper requeued the job and another node claimed it as attempt 2."""
    FineTuneJob.objects.filter(pk=job.pk).update(
        attempt=2, status_detail="attempt 2 resumes", log_tail="attempt 2's log"
    )


@pytest.fixture
def attempt_one(make_job, monkeypatch, tmp_path) -> FineTuneJob:
    """A job running as attempt 1, its trainer's base a stand-in folder."""
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    monkeypatch.setattr(artifacts, "materialize_version", lambda version: tmp_path)
    return job


def assert_left_to_attempt_two(job: FineTuneJob) -> None:
    job.refresh_from_db()
    assert (job.status, job.attempt, job.finished_at) == (JobStatus.RUNNING, 2, None)
    assert job.status_detail == "attempt 2 resumes" and job.output_version is None
    assert job.log_tail == "attempt 2's log"


@pytest.mark.parametrize("max_attempts", [3, 2], ids=["would-requeue", "would-give-up"])
def test_the_watcher_of_an_attempt_taken_over_leaves_the_job_to_the_new_one(
    make_job, enqueued, settings, max_attempts
):
    settings.TRAINING_MAX_ATTEMPTS = max_attempts
    settings.TRAINING_HEARTBEAT_SECONDS = 0  # it beats once while its trainer still runs
    beaten = timezone.now() - timedelta(minutes=1)
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=beaten)
    taken_over(job)
    trainer = subprocess.Popen(["sleep", "0.3"])  # attempt 1's trainer, exiting without ending the job
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    assert_left_to_attempt_two(job)
    assert job.heartbeat_at == beaten and enqueued == []


def test_the_watcher_of_an_attempt_taken_over_stops_its_trainer_at_its_next_beat(
    make_job, enqueued, settings
):
    """Its trainer would otherwise hold the GPUs (and race attempt 2) until its own next write."""
    settings.TRAINING_HEARTBEAT_SECONDS = 0
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    taken_over(job)
    trainer = subprocess.Popen(["sleep", "30"], start_new_session=True)  # attempt 1's, still training
    try:
        started = time.monotonic()
        tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
        # Stopped, not waited for: left alone, the trainer would have run its 30 s.
        assert trainer.poll() is not None and time.monotonic() - started < 20
    finally:
        trainer.kill()
    assert_left_to_attempt_two(job)
    assert enqueued == []


def test_a_trainer_taken_over_before_it_registers_registers_nothing_and_ends_nothing(
    attempt_one, monkeypatch
):
    job = attempt_one

    def trained(*, output_dir, **kwargs):
        output_dir.mkdir()
        (output_dir / "adapter_model.safetensors").write_bytes(b"weights")
        taken_over(job)  # while it trained
        return {"train_loss_last": 0.1}

    monkeypatch.setattr(lora, "train", trained)
    adapter = inspection.ModelFacts(format="safetensors", is_adapter=True, adapter={"r": 8})
    monkeypatch.setattr(inspection, "inspect_directory", lambda folder: adapter)
    versions = ModelVersion.objects.filter(model=job.target_model).count()
    assert runner.run(job.pk) == 4
    assert ModelVersion.objects.filter(model=job.target_model).count() == versions
    assert not default_store().has_blob(hashlib.sha256(b"weights").hexdigest()), "its output stays stored"
    assert_left_to_attempt_two(job)
    assert not finetune.finish(job.pk, JobStatus.SUCCEEDED, "attempt 1 is done", attempt=1)
    assert_left_to_attempt_two(job)


def test_a_trainer_whose_registration_fails_leaves_nothing_of_its_output_stored(attempt_one, monkeypatch):
    job = attempt_one

    def trained(*, output_dir, **kwargs):
        output_dir.mkdir()
        (output_dir / "adapter_model.safetensors").write_bytes(b"other weights")
        return {"train_loss_last": 0.1}

    def refused(*args, **kwargs):
        raise ValueError("the target model was archived meanwhile")

    monkeypatch.setattr(lora, "train", trained)
    adapter = inspection.ModelFacts(format="safetensors", is_adapter=True, adapter={"r": 8})
    monkeypatch.setattr(inspection, "inspect_directory", lambda folder: adapter)
    monkeypatch.setattr(finetune, "register_output", refused)
    assert runner.run(job.pk) == 2
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "archived meanwhile" in job.status_detail
    assert not default_store().has_blob(hashlib.sha256(b"other weights").hexdigest())


def test_a_trainer_whose_base_stopped_being_shared_fails_the_job_saying_why(
    make_job, base, team, other_team, engineer, monkeypatch, tmp_path
):
    """Another team's base, shared with the organisation when the job started, made private by its owners
    while the job trained: the runner's registration is refused (a DomainError), the job FAILED with that
    message rather than ERRORED with a traceback, and its output is not kept."""
    from portfolio.registry import services as registry
    from portfolio.registry.choices import Visibility
    from portfolio.registry.models import Model

    target = registry.create_model(actor=engineer, name="tuned-router", owner_team=team)
    Model.objects.filter(pk=base.model_id).update(owner_team=other_team, visibility=Visibility.ORGANISATION)
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now(), target_model=target)
    monkeypatch.setattr(artifacts, "materialize_version", lambda version: tmp_path)

    def trained(*, output_dir, **kwargs):
        output_dir.mkdir()
        (output_dir / "adapter_model.safetensors").write_bytes(b"weights of a withdrawn base")
        Model.objects.filter(pk=base.model_id).update(visibility=Visibility.TEAM)  # while it trained
        return {"train_loss_last": 0.1}

    monkeypatch.setattr(lora, "train", trained)
    adapter = inspection.ModelFacts(format="safetensors", is_adapter=True, adapter={"r": 8})
    monkeypatch.setattr(inspection, "inspect_directory", lambda folder: adapter)
    assert runner.run(job.pk) == 2
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "no longer shared with" in job.status_detail, job.status_detail
    assert not ModelVersion.objects.filter(model=target).exists()
    assert not default_store().has_blob(hashlib.sha256(b"weights of a withdrawn base").hexdigest())


def test_a_trainer_taken_over_stops_at_its_next_progress_write(attempt_one, monkeypatch):
    job = attempt_one
    steps = []

    def trained(*, on_progress, **kwargs):
        taken_over(job)
        for step in range(1, 11):
            on_progress(lora.Progress(step, 10, 1, 0.5, 100.0))
            steps.append(step)
        raise AssertionError("trained on after it was taken over")

    monkeypatch.setattr(lora, "train", trained)
    assert runner.run(job.pk) == 4
    assert steps == []
    assert_left_to_attempt_two(job)
    assert job.step == 0 and job.loss_curve == []


def test_a_watcher_requeuing_its_own_attempt_audits_it_as_the_reaper_does(make_job, enqueued, settings):
    """The trainer died without ending the job: the next attempt resumes it, a restart an auditor sees."""
    from portfolio.audit.models import AuditEvent

    settings.TRAINING_MAX_ATTEMPTS = 3
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    trainer = subprocess.Popen(["sleep", "0.1"])
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and len(enqueued) == 1
    moved = AuditEvent.objects.get(action="training.job_requeued")
    assert (moved.object_id, moved.actor_label, moved.after["status"]) == (
        str(job.pk),
        "system:training",
        "queued",
    )


@pytest.mark.parametrize("max_attempts", [3, 1], ids=["would-requeue", "would-give-up"])
def test_a_job_cancelled_while_its_node_was_silent_is_cancelled_not_moved(
    make_job, enqueued, settings, max_attempts
):
    """The user cancels a job that looks stuck (its node silent): the reaper ends it cancelled. Before, it
    moved the job to another node (a new, billed attempt that its watcher then killed) or failed it."""
    from portfolio.accounts.actor import Actor
    from portfolio.audit.models import AuditEvent

    settings.TRAINING_MAX_ATTEMPTS = max_attempts
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now() - timedelta(hours=1))
    finetune.cancel_job(actor=Actor.for_system("test"), job=job)

    assert job_reaper.reap_stale_jobs(timedelta(minutes=2)) == 1

    job.refresh_from_db()
    assert (job.status, job.attempt, enqueued) == (JobStatus.CANCELLED, 1, [])
    assert "not moved" in job.status_detail
    assert not AuditEvent.objects.filter(action="training.job_requeued").exists()
    assert AuditEvent.objects.filter(action="training.job_cancelled", object_id=str(job.pk)).exists()


def test_a_watcher_whose_trainer_died_after_a_cancel_does_not_start_it_again(make_job, enqueued, settings):
    settings.TRAINING_MAX_ATTEMPTS = 3
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now(), cancel_requested=True)
    settings.TRAINING_HEARTBEAT_SECONDS = (
        10**9
    )  # it does not beat (nor see the cancel) before its trainer exits
    trainer = subprocess.Popen(["sleep", "0.1"])
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    job.refresh_from_db()
    assert (job.status, enqueued) == (JobStatus.CANCELLED, [])


def test_a_cancel_committed_just_before_the_watchers_requeue_ends_the_job_cancelled(
    make_job, enqueued, settings, monkeypatch
):
    """The cancel lands after the watcher read the job and before its requeue: the requeue (a compare-and-swap
    on no cancel) does nothing, and the job is cancelled then, not left running with a dead trainer."""
    settings.TRAINING_MAX_ATTEMPTS = 3
    settings.TRAINING_HEARTBEAT_SECONDS = 10**9
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    ended = tasks.metering.attempt_ended

    def cancelled_meanwhile(job, *args):
        FineTuneJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        return ended(job, *args)

    monkeypatch.setattr(tasks.metering, "attempt_ended", cancelled_meanwhile)
    trainer = subprocess.Popen(["sleep", "0.1"])
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    job.refresh_from_db()
    assert (job.status, enqueued) == (JobStatus.CANCELLED, [])


def test_a_heartbeat_that_fails_once_does_not_end_the_watch(make_job, enqueued, settings, monkeypatch):
    """The database gone a moment at one beat: the watcher used to end there, its trainer left unwatched
    and the attempt's compute never counted; it beats again and ends the attempt as usual."""
    from django.db import OperationalError

    settings.TRAINING_MAX_ATTEMPTS = 3
    settings.TRAINING_HEARTBEAT_SECONDS = 0
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    read, failed = tasks.log_tail, []

    def fails_once(*args):
        if not failed:
            failed.append(True)
            raise OperationalError("server closed the connection unexpectedly")
        return read(*args)

    monkeypatch.setattr(tasks, "log_tail", fails_once)
    trainer = subprocess.Popen(["sleep", "1.5"])
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    job.refresh_from_db()
    assert failed and job.compute_seconds >= 1
    assert job.status == JobStatus.QUEUED and len(enqueued) == 1, "ended as a trainer that exited is"


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_database_ended_is_made_again(make_job, enqueued, settings, monkeypatch):
    """The watcher's connection is ended by the server between two beats (a restart, a failover): the beat
    fails, the dead connection is dropped, and the next beat and the end of the attempt go through a new
    one. Kept open, the dead connection would fail every later query and the attempt would end unaccounted."""
    from django.db import connection, connections

    settings.TRAINING_MAX_ATTEMPTS = 3
    settings.TRAINING_HEARTBEAT_SECONDS = 0
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    read, ended = tasks.log_tail, []

    def end_the_connection_once(*args):
        if not ended:
            connection.ensure_connection()
            ended.append(connection.connection.info.backend_pid)
            other = connections.create_connection("default")
            try:
                with other.cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [ended[0]])
            finally:
                other.close()
        return read(*args)

    monkeypatch.setattr(tasks, "log_tail", end_the_connection_once)
    trainer = subprocess.Popen(["sleep", "1.5"])
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    job.refresh_from_db()
    assert ended and connection.connection.info.backend_pid != ended[0], "a new connection"
    assert job.compute_seconds >= 1
    assert job.status == JobStatus.QUEUED and len(enqueued) == 1


def test_a_database_gone_a_moment_when_the_trainer_exits_does_not_end_the_watch(
    make_job, enqueued, settings, monkeypatch
):
    """Each write at the end of an attempt (its compute, its log, the requeue) fails once, as it would with
    the database restarting: the watcher used to end there with the attempt's compute never counted and the
    job left running for the reaper; it tries each write again, and counts the compute once."""
    from django.db import OperationalError

    settings.TRAINING_MAX_ATTEMPTS = 3
    settings.TRAINING_HEARTBEAT_SECONDS = 3600  # one beat, at the start
    monkeypatch.setattr(tasks, "END_RETRY_WAITS", (0, 0, 0), raising=False)
    job = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    trainer = subprocess.Popen(["sleep", "0.5"])
    failed: list[str] = []

    def once(name, call):
        def failing(*args, **kwargs):
            if trainer.poll() is not None and name not in failed:
                failed.append(name)
                raise OperationalError("server closed the connection unexpectedly")
            return call(*args, **kwargs)

        return failing

    monkeypatch.setattr(tasks.psutil, "cpu_count", once("compute", tasks.psutil.cpu_count))
    monkeypatch.setattr(tasks, "log_tail", once("log", tasks.log_tail))
    monkeypatch.setattr(tasks.metering, "attempt_ended", once("meter", tasks.metering.attempt_ended))
    started = time.monotonic()
    tasks._watch(job.pk, trainer.pid, trainer, Lease(f"test:{job.pk}:1"), attempt=1)
    took = time.monotonic() - started
    job.refresh_from_db()
    assert failed == ["compute", "log", "meter"]
    assert 0.4 <= job.compute_seconds <= took, "counted once"
    assert job.status == JobStatus.QUEUED and len(enqueued) == 1, "ended as a trainer that exited is"


def test_a_copy_of_the_message_on_a_node_the_job_left_does_not_start_it_there(
    make_job, settings, monkeypatch
):
    """Attempt 1's worker on node-b was killed, its message redelivered to node-b's queue; the reaper has
    moved the job to node-a meanwhile. Node-b's agent gets the copy: it must not claim the job and train it
    on node-b with node-a's GPUs (nor adopt a pid of node-a's)."""
    job = make_job(status=JobStatus.QUEUED, attempt=1)
    assert job.node is not None and job.node.name == "node-a"
    monkeypatch.setenv("PORTFOLIO_NODE_AGENT", "1")
    settings.NODE_NAME = "node-b"

    def started(*args, **kwargs):
        raise AssertionError("a trainer was started on the wrong node")

    monkeypatch.setattr(tasks, "_start_child", started)
    tasks.run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 1)
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, pid=os.getpid())
    # A pid of node-a's that happens to live here, running a trainer of this job.
    monkeypatch.setattr(tasks, "_alive", lambda pid, job_id: True)
    monkeypatch.setattr(tasks, "_watch", started)
    tasks.run_job(job.pk)
