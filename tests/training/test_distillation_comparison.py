"""A distillation job's comparison: its runs are scored on its teacher's answers (``training_data``), so
its base column is the base's run on those answers, whichever job recorded it, never a run on the prompts."""

from __future__ import annotations

import pytest
from django.utils import timezone

from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving.models import Endpoint
from tests.conftest import actor_for
from tests.training.conftest import jsonl, tickets, upload
from training import services
from training.choices import JobStatus
from training.models import EvalRun
from training.views.evals import eval_comparison

pytestmark = pytest.mark.django_db


@pytest.fixture
def teacher(team) -> Endpoint:
    return Endpoint.objects.create(name="big-teacher", owner_team=team)


@pytest.fixture
def answers(engineer, team):
    """The teacher's answers to the prompts, as distillation stage one records them: a dataset version."""
    answers_set = services.create_dataset(
        actor=engineer, owner_team=team, name="tickets-distilled", kind="chat"
    )
    version, _ = upload(engineer, answers_set, jsonl(*tickets(12)))
    return version


@pytest.fixture
def finished(make_job, base):
    """A succeeded job of ``fields`` whose output is a new ready adapter of the base's model."""

    def make(number: int, **fields):
        tuned = ModelVersion.objects.create(
            model=base.model,
            number=number,
            kind=VersionKind.ADAPTER,
            base_version=base,
            source=Source.FINE_TUNE,
            status=VersionStatus.READY,
        )
        return make_job(
            status=JobStatus.SUCCEEDED, output_version=tuned, finished_at=timezone.now(), **fields
        )

    return make


def scored(job, version, on, accuracy: float) -> EvalRun:
    return EvalRun.objects.create(
        version=version,
        dataset_version=on,
        job=job,
        status="succeeded",
        metrics={"rows": 4, "accuracy": accuracy},
        finished_at=timezone.now(),
    )


def test_a_second_distillation_on_the_same_answers_is_compared_with_the_base_run_of_the_first(
    org, base, teacher, answers, finished
):
    first = finished(2, teacher_endpoint=teacher, distilled_dataset_version=answers)
    second = finished(3, teacher_endpoint=teacher, distilled_dataset_version=answers)
    scored(first, base, answers, 0.25)
    scored(first, first.output_version, answers, 0.8)
    # The runner scores the base once per training data: the second job recorded only its own result.
    scored(second, second.output_version, answers, 0.9)

    evals = eval_comparison(actor_for(org["viewer"]), second)
    assert [(run.role, run.version) for run in evals["columns"]] == [
        ("Base", base),
        ("Fine-tuned", second.output_version),
    ]
    accuracy = next(row for row in evals["rows"] if row["label"] == "Accuracy")
    assert accuracy["values"] == ["25.0%", "90.0%"] and accuracy["change"] == "+65.0 pts"


def test_a_fine_tunes_base_run_on_the_prompts_is_not_the_base_of_a_distillation(
    org, base, dataset_version, teacher, answers, finished
):
    plain = finished(2)
    scored(plain, base, dataset_version, 0.1)
    distilled = finished(3, teacher_endpoint=teacher, distilled_dataset_version=answers)
    scored(distilled, distilled.output_version, answers, 0.9)

    evals = eval_comparison(actor_for(org["viewer"]), distilled)
    assert [run.version for run in evals["columns"]] == [distilled.output_version]
    assert not evals["compare"]
