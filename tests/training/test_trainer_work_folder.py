"""A trainer's work folder (``DATA_DIR/work/train-<job>-<attempt>-*``: checkpoints, the output) does not
outlive it on the node: a trainer stopped by SIGTERM (a cancel) removes it on its way out, and the watcher
removes what a trainer killed outright (SIGKILL, the OOM killer) left, and nothing of another job or
attempt."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.training.work_folders import KILLED, stop_removes_its_work_folder
from training import runner, tasks
from training.choices import JobStatus

# ``training.runner.main`` over a job that works in its work folder far longer than the test.
WORKING = """
import sys, tempfile, time
import django
from training import runner

folder = sys.argv[1]

def run(job_id):
    with tempfile.TemporaryDirectory(dir=folder, prefix=runner.work_prefix(job_id, 1)) as work:
        open(work + "/adapter_model.safetensors", "wb").write(b"weights")
        print("working", flush=True)
        time.sleep(120)
    return 0

django.setup = lambda: None  # no database: the job is a stand-in
runner.run = run
sys.argv[1:] = ["7"]
runner.main()
"""


def test_a_trainer_stopped_by_sigterm_removes_its_work_folder(tmp_path):
    stop_removes_its_work_folder(WORKING, tmp_path, "working", "train-7-1-*")


@pytest.mark.django_db
def test_the_watcher_removes_the_work_folder_a_killed_trainer_left(make_job, enqueued, settings, monkeypatch):
    job = make_job()
    work = settings.DATA_DIR / "work"
    work.mkdir(parents=True, exist_ok=True)
    others = [work / f"{runner.work_prefix(job.pk + 1, 1)}x", work / f"{runner.work_prefix(job.pk, 2)}x"]
    for other in others:  # another job's, and another attempt of this one (perhaps running on this node)
        other.mkdir()

    def start(module, job_id, log, env):
        assert module == "training.runner"
        return subprocess.Popen(
            [sys.executable, "-c", KILLED, str(work), runner.work_prefix(job_id, 1)], start_new_session=True
        )

    monkeypatch.setattr(tasks, "_start_child", start)
    tasks.run_job(job.pk)
    job.refresh_from_db()
    assert (job.attempt, job.status) == (1, JobStatus.QUEUED), job.status_detail
    assert "signal 9" in job.status_detail and enqueued == [job]
    assert sorted(work.iterdir()) == sorted(others)
