"""A trainer whose watcher died with the node agent's processes ran on unwatched: the reaper requeued its job
and the next attempt could start beside it, on the same GPUs and into the same work folder. The node agent
now stops every trainer in its data folder that no live attempt owns (``training.trainer_sweep``)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.conf import settings

from serving import agent_loop
from tests.serving.nodes import add_node
from training import trainer_sweep
from training.choices import JobStatus
from training.tasks import attempt_lease

pytestmark = pytest.mark.django_db

LATER = 2 * trainer_sweep.YOUNG_SECONDS  # seconds after the trainers' start: none of them is young then


@pytest.fixture
def start_trainer():
    """A stand-in trainer as ``ps`` sees one (argv ``... training.runner <job id>``), working in a folder."""
    started: list[subprocess.Popen] = []

    def start(job_id: int, folder=None) -> subprocess.Popen:
        cwd = folder or settings.DATA_DIR / "training"
        cwd.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-c", "import time; time.sleep(60)", "training.runner", str(job_id)]
        started.append(subprocess.Popen(argv, cwd=cwd, start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_earlier_looks():
    trainer_sweep._unheld_since.clear()
    yield
    trainer_sweep._unheld_since.clear()


def sweep(node_name: str) -> list[int]:
    """Two passes ``TASK_LEASE_SECONDS`` apart: an unheld lease is an orphan's only if it stays unheld."""
    first = trainer_sweep.stop_orphans(node_name, now=time.time() + LATER)
    return first + trainer_sweep.stop_orphans(
        node_name, now=time.time() + LATER + settings.TASK_LEASE_SECONDS
    )


def gone(process: subprocess.Popen) -> bool:
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_a_trainer_whose_watcher_is_gone_is_stopped(make_job, start_trainer):
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    trainer = start_trainer(job.pk)
    job.pid = trainer.pid
    job.save(update_fields=["pid"])
    assert sweep(job.node.name) == [trainer.pid]
    assert gone(trainer)


def test_a_lease_unheld_at_one_look_only_is_not_an_orphans(make_job, start_trainer):
    """Its watcher takes a lease that lapsed while Redis was away back within seconds (``Lease.regain``):
    a sweep in between must not stop its trainer (found by review: one Redis outage stopped every fine-tune)."""
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    trainer = start_trainer(job.pk)
    job.pid = trainer.pid
    job.save(update_fields=["pid"])
    assert trainer_sweep.stop_orphans(job.node.name, now=time.time() + LATER) == []
    lease = attempt_lease(job)
    assert lease.acquire(wait=False)  # taken back by its watcher
    try:
        later = time.time() + LATER + settings.TASK_LEASE_SECONDS
        assert trainer_sweep.stop_orphans(job.node.name, now=later) == []
    finally:
        lease.release()
    assert trainer.poll() is None


def test_a_watched_trainer_runs_on(make_job, start_trainer):
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    trainer = start_trainer(job.pk)
    job.pid = trainer.pid
    job.save(update_fields=["pid"])
    lease = attempt_lease(job)
    assert lease.acquire(wait=False)
    try:
        assert sweep(job.node.name) == []
    finally:
        lease.release()
    assert trainer.poll() is None


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_the_trainer_of_a_job_requeued_or_ended_is_stopped(make_job, start_trainer, status):
    job = make_job(status=status, attempt=1)
    trainer = start_trainer(job.pk)
    job.pid = trainer.pid
    job.save(update_fields=["pid"])
    assert sweep(job.node.name) == [trainer.pid]
    assert gone(trainer)


def test_the_trainer_of_an_earlier_attempt_or_another_node_is_stopped(make_job, start_trainer, cpu_pool):
    job = make_job(status=JobStatus.RUNNING, attempt=2)
    old = start_trainer(job.pk)
    job.pid = old.pid + 100_000  # attempt 2 runs another trainer
    job.save(update_fields=["pid"])
    lease = attempt_lease(job)
    assert lease.acquire(wait=False)  # attempt 2's watcher is alive
    try:
        assert sweep(job.node.name) == [old.pid]
    finally:
        lease.release()
    moved = make_job(status=JobStatus.RUNNING, attempt=1, node=add_node(cpu_pool, "node-b", cores=4))
    elsewhere = start_trainer(moved.pk)
    moved.pid = elsewhere.pid
    moved.save(update_fields=["pid"])
    assert sweep("node-a") == [elsewhere.pid]


def test_a_young_trainer_and_one_outside_the_data_folder_are_left(make_job, start_trainer, tmp_path):
    job = make_job(status=JobStatus.QUEUED, attempt=1)
    young = start_trainer(job.pk)
    assert trainer_sweep.stop_orphans(job.node.name) == []  # its pid may not be recorded yet
    outside = start_trainer(job.pk, folder=tmp_path / "another-agent")
    assert sweep(job.node.name) == [young.pid]
    assert outside.poll() is None


def test_the_node_agent_loop_runs_the_sweep():
    assert trainer_sweep.sweep in agent_loop.PASS_HOOKS
