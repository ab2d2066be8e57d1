"""A base with no chat template is not trained on conversations: the trainer renders every chat row with the
base's template, so the job was queued, loaded the base on its node and failed there with transformers'
"chat_template is not set"; a distillation failed so only after the teacher's whole prompt set was bought."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.errors import Invalid
from portfolio.registry.models import ModelVersion
from serving.models import Endpoint
from tests.training.conftest import jsonl, upload
from training import finetune, services
from training.choices import DatasetKind, JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_template(base) -> ModelVersion:
    ModelVersion.objects.filter(pk=base.pk).update(has_chat_template=False)
    base.refresh_from_db()
    return base


def _start(engineer, base, dataset_version, pool) -> FineTuneJob:
    return finetune.start_job(actor=engineer, base_version=base, dataset_version=dataset_version, pool=pool)


def test_a_chat_dataset_on_a_base_with_no_chat_template_is_refused_before_any_job(
    engineer, no_template, dataset_version, cpu_pool, enqueued
):
    with pytest.raises(Invalid, match=r"^base_version: .* has no chat template, and .* holds conversations"):
        _start(engineer, no_template, dataset_version, cpu_pool)
    assert not FineTuneJob.objects.exists() and enqueued == []


def test_prompt_completion_rows_on_that_base_train_as_before(engineer, team, no_template, cpu_pool):
    completions = services.create_dataset(
        actor=engineer, owner_team=team, name="completions", kind=DatasetKind.COMPLETION
    )
    rows = [{"prompt": f"Ticket {i}: route it to", "completion": " billing"} for i in range(20)]
    version, _ = upload(engineer, completions, jsonl(*rows))
    job = _start(engineer, no_template, version, cpu_pool)
    assert job.status == JobStatus.QUEUED and FineTuneJob.objects.get() == job


def test_a_distillation_into_a_student_with_no_chat_template_is_refused_before_the_teacher_is_asked(
    client, org, team, no_template, dataset_version, cpu_pool, enqueued
):
    """The teacher's answers are conversations whatever the prompts' shape; each is a billed call."""
    Endpoint.objects.create(name="big-teacher", owner_team=team)
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/training/jobs",
        {
            "base_version_id": no_template.pk,
            "dataset_version_id": dataset_version.pk,
            "pool": "cpu",
            "teacher_endpoint": "big-teacher",
        },
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert "has no chat template" in response.json()["error"]["message"]
    assert not FineTuneJob.objects.exists() and enqueued == []


def test_the_distillation_form_puts_the_refusal_on_the_student(
    client, org, team, no_template, dataset_version, cpu_pool, enqueued
):
    Endpoint.objects.create(name="big-teacher", owner_team=team)
    client.force_login(org["engineer"])
    page = client.post(
        reverse("distillation-create"),
        {"teacher": "big-teacher", "prompts": dataset_version.pk, "student": no_template.pk, "pool": "cpu"},
    )
    assert page.status_code == 200
    errors = page.context["form"].errors
    assert "has no chat template" in " ".join(errors.get("student", [])), errors
    assert not FineTuneJob.objects.exists()
