"""A merge's work folder (``DATA_DIR/work/merge-<job>-*``: the merged full-size weights) does not outlive its
process: a merge process stopped by SIGTERM (its watcher, past its time) removes it on its way out, and
what one killed outright (SIGKILL, the OOM killer, its watcher's death) left is removed when the merge ends
or is reaped, and nothing of another merge."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.registry import merging
from tests.training.work_folders import KILLED, stop_removes_its_work_folder
from training import tasks
from training.choices import JobStatus
from training.merges import services as merges
from training.models import MergeJob

# ``training.merges.runner.main`` over a merge that works in its work folder far longer than the test.
WORKING = """
import sys, tempfile, time, types
import django

folder = sys.argv[1]

def compute(job_id):
    with tempfile.TemporaryDirectory(dir=folder, prefix=f"merge-{job_id}-") as work:
        open(work + "/model.safetensors", "wb").write(b"merged weights")
        print("merging", flush=True)
        time.sleep(120)
    return "succeeded"

django.setup = lambda: None  # no database: the job is a stand-in
services = types.ModuleType("training.merges.services")
services.compute = compute
sys.modules["training.merges.services"] = services
sys.argv[1:] = ["7"]
from training.merges import runner
runner.main()
"""


def test_a_merge_process_stopped_by_sigterm_removes_its_work_folder(tmp_path):
    stop_removes_its_work_folder(WORKING, tmp_path, "merging", "merge-7-*")


@pytest.fixture
def work(settings) -> Path:
    return settings.DATA_DIR / "work"


def _others(work: Path, job_id: int) -> list[Path]:
    """Work folders of other merges (one whose id starts with this one's) and of an import: left alone."""
    others = [work / f"merge-{job_id + 1}-x", work / f"merge-{job_id}0-x", work / f"import-{job_id}-x"]
    for other in others:
        other.mkdir(parents=True)
    return others


@pytest.mark.django_db
def test_the_work_folder_a_killed_merge_process_left_is_removed_when_the_merge_ends(
    versions, engineer, work, tmp_path
):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.claim(job_id) is not None
    others = _others(work, job_id)
    log = tmp_path / "merge.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED, str(work), f"merge-{job_id}-"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    assert tasks._watch_merge(job_id, process, log) == JobStatus.FAILED

    assert "signal 9" in MergeJob.objects.get(pk=job_id).status_detail
    assert sorted(work.iterdir()) == sorted(others)


@pytest.mark.django_db
def test_the_work_folder_of_a_merge_whose_watcher_died_is_removed_when_it_is_reaped(versions, engineer, work):
    """Its process stopped at once with its watcher (``training.orphans``, by ``os._exit``), leaving it."""
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert merges.claim(job_id) is not None
    others = _others(work, job_id)
    left = work / f"merge-{job_id}-abc"
    (left / "merged").mkdir(parents=True)
    (left / "merged" / "model.safetensors").write_bytes(b"merged weights")
    MergeJob.objects.filter(pk=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))

    assert merges.reap_stale(timedelta(minutes=2)) == [job_id]

    assert sorted(work.iterdir()) == sorted(others)
