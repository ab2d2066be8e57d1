"""A fine-tune stores a checkpoint every few steps, and a resume only ever starts from the last: each one
stored makes the one before it garbage (an adapter and its optimizer's state, billed as the team's storage),
and a job that succeeded needs none."""

from __future__ import annotations

from pathlib import Path

import pytest

from portfolio.registry.models import Artifact
from portfolio.registry.stores import default_store
from training import runner
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


def checkpoint_folder(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(f"weights of step {step}".encode())
    (folder / "optimizer.pt").write_bytes(f"optimizer state of step {step}".encode())
    (folder / "adapter_config.json").write_text('{"r": 8}')  # the same in every checkpoint
    return folder


def blobs_in_store(artifact: Artifact) -> dict[str, bool]:
    store = default_store()
    return {entry["path"]: store.has_blob(entry["sha256"]) for entry in artifact.files}


def test_each_checkpoint_stored_deletes_the_one_it_supersedes(make_job, tmp_path):
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    store = default_store()
    first = runner._store_checkpoint(store, jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    first_files = Artifact.objects.get(pk=first)
    second = runner._store_checkpoint(store, jobs, 1, checkpoint_folder(tmp_path, 20), 20)
    job.refresh_from_db()
    assert (job.checkpoint_id, job.checkpoint_step) == (second, 20)
    assert not Artifact.objects.filter(pk=first).exists()
    assert blobs_in_store(first_files) == {
        "adapter_model.safetensors": False,
        "optimizer.pt": False,
        "adapter_config.json": True,  # the second checkpoint holds it too
    }
    assert all(blobs_in_store(Artifact.objects.get(pk=second)).values())


def test_a_checkpoint_of_an_attempt_taken_over_keeps_the_one_the_new_attempt_resumes_from(make_job, tmp_path):
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    store = default_store()
    first = runner._store_checkpoint(store, jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    FineTuneJob.objects.filter(pk=job.pk).update(attempt=2)  # attempt 1 went silent; attempt 2 resumes
    late = runner._store_checkpoint(store, jobs, 1, checkpoint_folder(tmp_path, 20), 20)  # attempt 1, alive
    job.refresh_from_db()
    assert (job.checkpoint_id, job.checkpoint_step) == (first, 10)
    assert not Artifact.objects.filter(pk=late).exists(), "the late checkpoint is nobody's: deleted"
    assert all(blobs_in_store(Artifact.objects.get(pk=first)).values())


def test_an_artifact_still_referred_to_is_not_discarded(make_job, tmp_path):
    from portfolio.registry.artifacts import discard_if_unused

    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    held = runner._store_checkpoint(default_store(), jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    assert not discard_if_unused(default_store(), held)
    assert all(blobs_in_store(Artifact.objects.get(pk=held)).values())


@pytest.mark.parametrize(
    "status", [JobStatus.FAILED, JobStatus.ERRORED, JobStatus.CANCELLED, JobStatus.SUCCEEDED]
)
def test_a_job_that_ends_however_it_ends_leaves_no_checkpoint_in_the_store(make_job, tmp_path, status):
    from training import finetune

    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    held = runner._store_checkpoint(default_store(), jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    files = Artifact.objects.get(pk=held)
    assert finetune.finish(job.pk, status, "ended")
    job.refresh_from_db()
    assert job.checkpoint_id is None and not Artifact.objects.filter(pk=held).exists()
    assert not any(blobs_in_store(files).values())


def test_a_queued_job_cancelled_with_a_checkpoint_leaves_none(
    make_job, tmp_path, org, django_capture_on_commit_callbacks
):
    from tests.conftest import actor_for
    from training import finetune

    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    held = runner._store_checkpoint(default_store(), jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)  # requeued after a lost attempt
    with django_capture_on_commit_callbacks(execute=True):
        finetune.cancel_job(actor=actor_for(org["admin"]), job=job)
    assert not Artifact.objects.filter(pk=held).exists()


def test_a_store_that_fails_to_delete_a_superseded_checkpoint_does_not_fail_the_training(
    make_job, tmp_path, monkeypatch
):
    from portfolio.registry import artifacts

    def broken(*args, **kwargs):
        raise OSError("the store is away")

    monkeypatch.setattr(artifacts, "discard_if_unused", broken)
    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    runner._store_checkpoint(default_store(), jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    second = runner._store_checkpoint(default_store(), jobs, 1, checkpoint_folder(tmp_path, 20), 20)
    job.refresh_from_db()
    assert job.checkpoint_id == second


def test_a_checkpoint_whose_store_fails_midway_leaves_nothing_of_it_stored(make_job, tmp_path, monkeypatch):
    """The store refuses the second file: the first one, already written and recorded by nothing, is
    deleted (it used to stay, billed as storage), and no row is left for the sweep."""
    from portfolio.registry.models import PendingWrite
    from portfolio.registry.storage import LocalStore

    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    store = default_store()
    put, puts = LocalStore.put_blob, []

    def full_after_one(self, digest, source, size):
        puts.append(digest)
        if len(puts) == 2:
            raise OSError("no space left on the store")
        put(self, digest, source, size)

    monkeypatch.setattr(LocalStore, "put_blob", full_after_one)
    with pytest.raises(OSError):
        runner._store_checkpoint(store, jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    assert not store.has_blob(puts[0])
    assert not PendingWrite.objects.exists()
    job.refresh_from_db()
    assert job.checkpoint_id is None


def test_a_trainer_killed_as_its_checkpoint_is_recorded_leaves_it_to_the_sweep(
    make_job, tmp_path, monkeypatch
):
    """Killed between recording the checkpoint and making it the job's (here: the update raises, and the
    clean-up is skipped as a kill skips it): the checkpoint used to stay recorded, referred to by nothing,
    and kept for ever, as the sweep keeps every recorded artifact. Nothing is recorded now, and the sweep
    deletes what was stored."""
    from datetime import timedelta

    from portfolio.registry import pending_writes
    from portfolio.registry.pending_writes import PendingWrites

    job = make_job(status=JobStatus.RUNNING, attempt=1)
    jobs = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    store = default_store()
    artifacts_before = set(Artifact.objects.values_list("pk", flat=True))  # the base's, the dataset's
    update = type(jobs).update

    def killed(queryset, **fields):
        if "checkpoint" in fields:
            raise SystemExit("killed")
        return update(queryset, **fields)

    monkeypatch.setattr(type(jobs), "update", killed)
    monkeypatch.setattr(PendingWrites, "discard", lambda log, store: None)
    with pytest.raises(SystemExit):
        runner._store_checkpoint(store, jobs, 1, checkpoint_folder(tmp_path, 10), 10)
    monkeypatch.undo()
    assert set(Artifact.objects.values_list("pk", flat=True)) == artifacts_before, "nothing recorded"
    row = pending_writes.PendingWrite.objects.get()
    stored = row.written["blobs"]
    assert len(stored) == 3 and all(store.has_blob(digest) for digest in stored)
    assert pending_writes.sweep(timedelta(0)) == 1
    assert not any(store.has_blob(digest) for digest in stored)
    job.refresh_from_db()
    assert job.checkpoint_id is None


def test_a_checkpoint_is_stored_with_the_loss_points_up_to_its_step(make_job, monkeypatch, tmp_path):
    """Progress is written at most once a second; a checkpoint stored right after a step whose write was held
    back carried no point for that step, and a resume keeps only the points up to its checkpoint: the step
    was missing from the job's loss curve for good (CI run of stop 48: ``test_resume``'s curve lacked step 4)."""
    from portfolio.registry import artifacts
    from training import lora

    job = make_job(status=JobStatus.RUNNING, attempt=1)
    monkeypatch.setattr(artifacts, "materialize_version", lambda version: tmp_path)
    seen = {}

    def trained(*, on_progress, on_checkpoint, **kwargs):
        for step in (1, 2):  # within a second of each other: the write of step 2 is held back
            on_progress(lora.Progress(step, 10, 1, 1.0 / step, 100.0))
        on_checkpoint(checkpoint_folder(tmp_path, 2), 2)
        stored = FineTuneJob.objects.get(pk=job.pk)  # what a resume would start from, were it killed now
        seen.update(step=stored.checkpoint_step, curve=[point[0] for point in stored.loss_curve])
        raise RuntimeError("killed after the checkpoint")

    monkeypatch.setattr(lora, "train", trained)
    runner.run(job.pk)
    assert seen == {"step": 2, "curve": [1, 2]}
