"""What a merge's readers see of how it ended: its traceback (errored) or its process's log above the reason
(failed) carry the node's paths and the libraries' output, for those who run the team's training only, as a
fine-tune's do; its other readers (a viewer, the teams an adapter is shared with, on its page) read the reason
(found by review: every reader of the merge's API, and of a shared adapter's page, saw them)."""

from __future__ import annotations

import pytest
from django.utils.html import escape

from portfolio.registry import merging
from tests.training.test_merges import merge_here
from training.choices import JobStatus
from training.merges import services as merges
from training.merges import weights
from training.models import MergeJob

pytestmark = pytest.mark.django_db
LOG = "loading /var/lib/portfolio/cache/3f2a/model.safetensors\npeft: warning of its own"


def detail(client, user, job_id: int) -> str:
    client.force_login(user)
    response = client.get(f"/api/v1/training/merges/{job_id}")
    assert response.status_code == 200, response.content
    return response.json()["status_detail"]


def test_an_errored_merges_traceback_is_for_those_who_run_training(
    versions, engineer, org, client, monkeypatch
):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    monkeypatch.setattr(weights, "merge_directory", lambda *args: 1 / 0)
    assert merge_here(job_id) == JobStatus.ERRORED

    assert "Traceback" in detail(client, org["engineer"], job_id)
    assert detail(client, org["viewer"], job_id) == merges.ERRORED_FOR_READERS
    page = client.get(f"/models/{adapter.model.name}/v{adapter.number}/").content.decode()
    assert "Traceback" not in page and "ZeroDivisionError" not in page
    assert f"Merge #{job_id} errored: {escape(merges.ERRORED_FOR_READERS)}" in page


def test_a_failed_merges_process_log_is_for_those_who_run_training(versions, engineer, org, client):
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    MergeJob.objects.filter(pk=job_id).update(status=JobStatus.RUNNING)
    merges.ended(job_id, 1.0, "the merge process exited (code 1) without ending the merge.", log=LOG)

    assert detail(client, org["engineer"], job_id).startswith("loading /var/lib/portfolio/cache")
    shown = detail(client, org["viewer"], job_id)
    assert shown == "the merge process exited (code 1) without ending the merge."
