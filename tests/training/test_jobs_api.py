"""The jobs REST API starts a distillation when given a teacher endpoint, through the same service and
gate as the form. Nothing trains here (``finetune.enqueue`` is recorded)."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from serving.models import Endpoint
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


def distillation(base, dataset_version, teacher: str) -> dict:
    return {
        "base_version_id": base.pk,
        "dataset_version_id": dataset_version.pk,
        "pool": "cpu",
        "teacher_endpoint": teacher,
        "hyperparameters": {"epochs": 1},
    }


def test_a_job_with_a_teacher_endpoint_is_a_distillation(
    client, org, team, base, dataset_version, cpu_pool, enqueued
):
    Endpoint.objects.create(name="big-teacher", owner_team=team)
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/training/jobs",
        distillation(base, dataset_version, "big-teacher"),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["teacher_endpoint"], body["distilled_dataset_version_id"], body["status"]) == (
        "big-teacher",
        None,
        "queued",
    )
    job = FineTuneJob.objects.get(pk=body["id"])
    assert job.is_distillation and job.hyperparameters["epochs"] == 1
    assert AuditEvent.objects.filter(action="training.distillation_start", object_id=str(job.pk)).exists()
    assert client.get(f"/api/v1/training/jobs/{job.pk}").json()["teacher_endpoint"] == "big-teacher"


def test_a_teacher_the_caller_may_not_see_is_not_found(
    client, org, other_team, base, dataset_version, cpu_pool, enqueued
):
    Endpoint.objects.create(name="their-teacher", owner_team=other_team)
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/training/jobs",
        distillation(base, dataset_version, "their-teacher"),
        content_type="application/json",
    )
    assert response.status_code == 404 and not FineTuneJob.objects.exists()


def test_whole_number_hyperparameters_sent_as_json_are_stored_as_whole_numbers_and_halves_refused(
    client, org, base, dataset_version, cpu_pool, enqueued
):
    """The API's schema reads every number as a float: 1 arrived as 1.0, passed the range check, and the
    trainer's range(epochs) raised once the job held its node and had loaded the base."""
    client.force_login(org["engineer"])
    job = {"base_version_id": base.pk, "dataset_version_id": dataset_version.pk, "pool": "cpu"}
    sent = {"epochs": 2, "batch_size": 4, "lora_r": 8, "max_length": 256, "learning_rate": 0.0005}
    response = client.post(
        "/api/v1/training/jobs", {**job, "hyperparameters": sent}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    stored = FineTuneJob.objects.get().hyperparameters
    assert {name: (stored[name], type(stored[name])) for name in sent} == {
        "epochs": (2, int),
        "batch_size": (4, int),
        "lora_r": (8, int),
        "max_length": (256, int),
        "learning_rate": (0.0005, float),
    }
    for half in ({"epochs": 0.5}, {"batch_size": 2.5}, {"lora_r": 7.9}):
        response = client.post(
            "/api/v1/training/jobs", {**job, "hyperparameters": half}, content_type="application/json"
        )
        assert response.status_code == 400 and "a whole number" in response.json()["error"]["message"]
    assert FineTuneJob.objects.count() == 1


@pytest.mark.parametrize("name", ["epochs", "batch_size", "seed", "learning_rate"])
def test_a_boolean_hyperparameter_is_refused_not_read_as_one(
    client, org, base, dataset_version, cpu_pool, enqueued, name
):
    """Found by review: the schema's lax numbers took a JSON ``true`` for 1.0 before the service's refusal of
    booleans could see it (``epochs: true`` started a one-epoch job)."""
    client.force_login(org["engineer"])
    job = {"base_version_id": base.pk, "dataset_version_id": dataset_version.pk, "pool": "cpu"}
    response = client.post(
        "/api/v1/training/jobs", {**job, "hyperparameters": {name: True}}, content_type="application/json"
    )
    assert response.status_code in (400, 422), response.content
    assert "hyperparameters" in response.content.decode() and not FineTuneJob.objects.exists()
