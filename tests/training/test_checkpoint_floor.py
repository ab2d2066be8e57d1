"""A job checkpoints at most every 10 steps (or never, 0): each checkpoint saves the weights and optimizer
state to the store, and a client could ask for one a step. Refused through the REST API and the start form
alike (the service checks it), with the reason; nothing is started."""

from __future__ import annotations

import pytest
from django.urls import reverse

from training.choices import Method
from training.finetune import CHECKPOINT_EVERY_MIN
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


def _api_start(client, base, dataset_version, every):
    return client.post(
        "/api/v1/training/jobs",
        {
            "base_version_id": base.pk,
            "dataset_version_id": dataset_version.pk,
            "pool": "cpu",
            "hyperparameters": {"checkpoint_every": every},
        },
        content_type="application/json",
    )


@pytest.mark.parametrize("every", [1, 2, CHECKPOINT_EVERY_MIN - 1])
def test_a_checkpoint_every_few_steps_is_refused_by_the_api_and_nothing_starts(
    client, org, base, dataset_version, cpu_pool, enqueued, every
):
    client.force_login(org["engineer"])
    response = _api_start(client, base, dataset_version, every)
    assert response.status_code == 400, response.content
    message = response.json()["error"]["message"]
    assert message.startswith(
        f"hyperparameters.checkpoint_every: 0 (no checkpoints) or {CHECKPOINT_EVERY_MIN}.."
    )
    assert not FineTuneJob.objects.exists() and not enqueued


@pytest.mark.parametrize("every", [0, CHECKPOINT_EVERY_MIN, 100000])
def test_no_checkpoints_or_one_every_ten_steps_or_more_is_accepted(
    client, org, base, dataset_version, cpu_pool, enqueued, every
):
    client.force_login(org["engineer"])
    response = _api_start(client, base, dataset_version, every)
    assert response.status_code == 201, response.content
    assert FineTuneJob.objects.get().hyperparameters["checkpoint_every"] == every


def test_the_ceiling_still_holds(client, org, base, dataset_version, cpu_pool, enqueued):
    client.force_login(org["engineer"])
    response = _api_start(client, base, dataset_version, 100001)
    assert response.status_code == 400 and "checkpoint_every" in response.json()["error"]["message"]
    assert not FineTuneJob.objects.exists()


def test_the_start_form_shows_the_refusal_and_starts_nothing(
    client, org, base, dataset_version, cpu_pool, enqueued
):
    client.force_login(org["engineer"])
    response = client.post(
        reverse("job-create"),
        {
            "base_version": base.pk,
            "dataset_version": dataset_version.pk,
            "pool": cpu_pool.name,
            "method": Method.LORA,
            "checkpoint_every": "1",
        },
    )
    assert response.status_code == 200
    assert f"0 (no checkpoints) or {CHECKPOINT_EVERY_MIN}..100000 steps" in response.content.decode()
    assert not FineTuneJob.objects.exists() and not enqueued
