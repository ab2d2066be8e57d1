"""A trainer killed after it registered its version (while scoring it, say) is run again by its watcher or
the reaper: the new attempt must not train and register a second version of the same job. It scores what
the killed one had not and ends the job; a scoring failure leaves the registered version and says so."""

from __future__ import annotations

import pytest
from django.utils import timezone

from portfolio.registry import artifacts
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from training import evaluation, lora, runner, serving_speed
from training.choices import JobStatus
from training.models import EvalRun, FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def registered_then_killed(make_job, base, monkeypatch, tmp_path):
    """Attempt 2 of a job whose attempt 1 registered v2 and died before the job ended."""
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
        attempt=2,
        heartbeat_at=timezone.now(),
        output_version=tuned,
        metrics={"train_loss_last": 0.12},
    )
    monkeypatch.setattr(artifacts, "materialize_version", lambda version: tmp_path)
    monkeypatch.setattr(serving_speed, "serving_speed", lambda version, rows, team: {"measured": False})

    def trained_again(**kwargs):
        raise AssertionError("trained and registered a second time")

    monkeypatch.setattr(lora, "train", trained_again)
    return job


def test_an_attempt_after_one_killed_past_registering_scores_and_ends_without_training(
    registered_then_killed, monkeypatch
):
    job = registered_then_killed
    monkeypatch.setattr(evaluation, "score", lambda **kwargs: {"rows": 2, "accuracy": 1.0})
    assert job.training_data.eval_count > 0
    assert runner.run(job.pk) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.status_detail
    assert ModelVersion.objects.filter(model=job.target_model).count() == 2  # the base and v2, no v3
    assert job.metrics["train_loss_last"] == 0.12 and job.metrics["eval"]["accuracy"] == 1.0
    assert EvalRun.objects.filter(version=job.output_version, job=job).count() == 1


def test_a_registered_version_whose_scoring_fails_ends_the_job_succeeded_and_says_so(
    registered_then_killed, monkeypatch
):
    job = registered_then_killed

    def out_of_memory(**kwargs):
        raise RuntimeError("not enough memory to score")

    monkeypatch.setattr(evaluation, "score", out_of_memory)
    assert runner.run(job.pk) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert "Scoring its held-out rows failed (RuntimeError: not enough memory to score)" in job.status_detail
