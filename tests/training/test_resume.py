"""Checkpoint and resume, end to end with real LoRA training of SmolLM2-135M: a job is interrupted twice
after writing checkpoints (its trainer killed, then its whole node gone silent) and each time continues
from its last checkpoint, not from step 0, until it finishes and registers its adapter.

Kept cheap on two cores: 16 short rows, batches of 4, 3 epochs (12 steps), a checkpoint every 2 steps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.db import OperationalError, transaction
from django.utils import timezone

from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import Artifact, ModelVersion
from serving.choices import PoolKind
from serving.models import ComputePool, Node
from tests.training.conftest import upload
from training import finetune, job_reaper, services, tasks
from training.choices import JobStatus
from training.lora import TRAINER_STATE
from training.models import EvalRun, FineTuneJob

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "training" / "demo_data" / "ticket_routing.jsonl"
WAIT_SECONDS = 300


@pytest.fixture
def job(org, team, engineer, enqueued) -> FineTuneJob:
    call_command("import_demo_model", team=team.slug)
    base = ModelVersion.objects.get(model__name=MODEL_NAME, status=VersionStatus.READY)
    dataset = services.create_dataset(actor=engineer, owner_team=team, name="routing", kind="chat")
    rows = b"".join(DEMO_DATA.read_bytes().splitlines(keepends=True)[:18])
    version, _ = upload(engineer, dataset, rows, base_version=base, eval_fraction=0.1)
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    for name in ("node-a", "node-b"):
        Node.objects.create(
            name=name,
            pool=pool,
            address="127.0.0.1",
            cpu_cores=2,
            memory_bytes=2**34,
            heartbeat_at=timezone.now(),
        )
    target = registry.create_model(actor=engineer, name="router", owner_team=team)
    job = finetune.start_job(
        actor=engineer,
        base_version=base,
        dataset_version=version,
        pool=pool,
        target_model=target,
        # Every step trained (no early stopping), so that each attempt's steps are known in advance.
        hyperparameters={"epochs": 3, "batch_size": 4, "max_length": 128, "early_stopping_patience": 0},
    )
    # A checkpoint every 2 steps, under what a client may ask for (``finetune.CHECKPOINT_EVERY_MIN``): the
    # 12 steps would hold one at most, and the test interrupts the job after two.
    job.hyperparameters["checkpoint_every"] = 2
    job.save(update_fields=["hyperparameters"])
    return job


def _log(job_id: int) -> str:
    path = tasks._log_path(job_id)
    return path.read_text() if path.exists() else ""


def _stopped(group: int) -> None:
    """SIGSTOP a process group and wait until its leader has stopped (a signal takes effect when the process
    next leaves the kernel): from then on it writes nothing, to its log or to the database."""
    os.killpg(group, signal.SIGSTOP)
    leader = psutil.Process(group)
    deadline = time.monotonic() + 30
    while leader.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.01)


def kill_when(what: str, ready, job_id: int, groups) -> FineTuneJob:
    """SIGKILL the process groups ``groups(job)`` once ``ready(job, log)`` holds, checked again with them
    frozen: a trainer still running between the check and the kill can store its next checkpoint meanwhile,
    and the test would interrupt a job that is not where it asserts it is. The job's row is read locked
    (NOWAIT): a frozen process that holds it (a checkpoint being recorded, a commit in flight) is let go on
    until the row is settled. Returns the job as it was killed."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = FineTuneJob.objects.get(pk=job_id)
        if ready(job, _log(job_id)):
            frozen, killed = groups(job), False
            try:
                for group in frozen:
                    _stopped(group)
                with transaction.atomic():
                    held = FineTuneJob.objects.select_for_update(nowait=True).get(pk=job_id)
                    if held.pid == job.pid and ready(held, _log(job_id)):
                        for group in frozen:
                            os.killpg(group, signal.SIGKILL)
                        killed = True
                        return held
            except OperationalError:  # the row is locked by a frozen process: not a settled point
                pass
            finally:
                if not killed:
                    for group in frozen:
                        os.killpg(group, signal.SIGCONT)
        time.sleep(0.2)
    job = FineTuneJob.objects.get(pk=job_id)
    pytest.fail(f"timed out waiting for {what}: {job.status} {job.status_detail}\n{job.log_tail}")


def run_in_thread(job_id: int) -> threading.Thread:
    """The node's Celery task, watching the trainer, as a worker thread runs it."""

    def work():
        from django.db import connections

        try:
            tasks.run_job(job_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def start_node_worker(job_id: int) -> subprocess.Popen:
    """The node's Celery task in a process of its own: the node that will go silent."""
    code = f"import django; django.setup(); from training.tasks import run_job; run_job({job_id})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**tasks._trainer_env(), "DJANGO_SETTINGS_MODULE": "portfolio.settings"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_an_interrupted_job_resumes_from_its_last_checkpoint_until_it_registers_its_adapter(job, enqueued):
    total = 12  # 16 train rows / 4 per batch x 3 epochs (2 of the 18 rows are held out)
    assert job.dataset_version.train_count == 16

    # Attempt 1 on node-a: the trainer is killed a step after a checkpoint (that step is lost); its watcher
    # requeues the job.
    def a_step_lost(j: FineTuneJob, log: str) -> bool:
        # Its checkpoint stored (the one it superseded deleted) and the next step trained and logged: the step
        # the resume trains again, whose loss is compared below.
        step = j.checkpoint_step
        return (
            j.status == JobStatus.RUNNING
            and bool(j.pid)
            and 2 <= step < j.step
            and re.search(rf"^checkpoint of step {step} stored ", log, re.M) is not None
            and re.search(rf"^step {step + 1}/{total} loss [0-9.]+ .*\n", log, re.M) is not None
        )

    watcher = run_in_thread(job.pk)
    killed = kill_when("a step after the first checkpoint", a_step_lost, job.pk, lambda j: [j.pid])
    watcher.join(timeout=120)
    job.refresh_from_db()
    first = job.checkpoint_step
    assert first == killed.checkpoint_step
    assert job.status == JobStatus.QUEUED and job.attempt == 1
    assert f"the trainer exited (signal 9); resuming from step {first}." == job.status_detail
    assert [queued.pk for queued in enqueued] == [job.pk, job.pk] and job.node.name == "node-a"

    # Attempt 2, node-a again: after one more checkpoint the whole node dies (worker and trainer); nothing
    # is left to report, the job stays "running" until the reaper notices the silence.
    def a_checkpoint_of_attempt_2(j: FineTuneJob, log: str) -> bool:
        # Its checkpoint stored (the one it superseded deleted, as the end asserts of every checkpoint) and the
        # last step not yet reached: the job is still unfinished when the node dies.
        resumed = log.partition(f"attempt 2: resuming from the checkpoint of step {first}\n")[2]
        return (
            j.status == JobStatus.RUNNING
            and j.attempt == 2
            and bool(j.pid)
            and j.checkpoint_step > first
            and re.search(rf"^checkpoint of step {j.checkpoint_step} stored ", resumed, re.M) is not None
            and re.search(rf"^step {total}/", resumed, re.M) is None
        )

    worker = start_node_worker(job.pk)
    # The worker first, so that it cannot see its trainer die (both are frozen before either is killed).
    kill_when(
        "a checkpoint of the second attempt", a_checkpoint_of_attempt_2, job.pk, lambda j: [worker.pid, j.pid]
    )
    worker.wait(timeout=30)
    # node-a stopped reporting; node-b's agent reports as usual.
    Node.objects.filter(name="node-a").update(heartbeat_at=timezone.now() - timedelta(hours=1))
    Node.objects.filter(name="node-b").update(heartbeat_at=timezone.now())
    time.sleep(1.5)
    job.refresh_from_db()
    second = job.checkpoint_step
    assert job.status == JobStatus.RUNNING and 0 < job.step < total
    assert job_reaper.reap_stale_jobs(timedelta(seconds=1)) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.node.name == "node-b"
    assert job.status_detail == f"Node went silent; resuming from step {second} on node-b."
    assert len(enqueued) == 3

    # Attempt 3 on node-b: continues from the second checkpoint and finishes.
    tasks.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, f"{job.status_detail}\n{job.log_tail}"
    assert job.attempt == 3 and job.step == total
    # Every checkpoint was deleted from the store once superseded, the last once the adapter was registered.
    assert job.checkpoint_id is None
    assert not Artifact.objects.filter(files__contains=[{"path": TRAINER_STATE}]).exists()
    training = job.metrics
    assert (training["resumed_from_step"], training["steps_trained"]) == (second, total - second)
    assert training["resumed_with_optimizer_state"] is True

    log = tasks._log_path(job.pk).read_text()
    for attempt, step in ((2, first), (3, second)):
        resumed = log[log.index(f"attempt {attempt}: resuming from the checkpoint of step {step}\n") :]
        assert re.search(r"^step (\d+)/", resumed, re.M).group(1) == str(step + 1), "not from step 0"
    # The step lost with attempt 1, trained again from the checkpoint's weights and random state, gives the
    # same loss: the resumed run continues the interrupted one exactly.
    lost = re.compile(rf"^step {first + 1}/{total} loss ([0-9.]+)", re.M)
    before, after = log.split(f"attempt 2: resuming from the checkpoint of step {first}\n")
    assert lost.search(before).group(1) == lost.search(after).group(1)
    # One point per step in the loss curve: the steps lost with each attempt were trained (and drawn) once.
    assert [step for step, _ in job.loss_curve] == list(range(1, total + 1))

    adapter = job.output_version
    assert (adapter.kind, adapter.base_version, adapter.source, adapter.status) == (
        VersionKind.ADAPTER,
        job.base_version,
        Source.FINE_TUNE,
        VersionStatus.READY,
    )
    assert adapter.metrics["job"] == job.pk and adapter.metrics["training"]["resumed_from_step"] == second
    # Scored on the held-out rows; neither version is deployed, and the runs say so instead of timing it.
    runs = EvalRun.objects.filter(job=job)
    assert {run.version for run in runs} == {job.base_version, adapter}
    assert all(run.metrics["serving"]["deployed"] is False for run in runs)
