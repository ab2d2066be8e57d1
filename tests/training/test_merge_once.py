"""An adapter is merged once: while the version it was merged as is live, another merge (hours of a node's
cores for a second copy of the same weights) is refused when asked for, before its process merges, and when
it registers; the adapter's page says where it went instead of offering the button. Archived, it may be
merged again."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from portfolio.registry import merging
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from training.choices import JobStatus
from training.merges import services as merges
from training.merges import weights
from training.models import MergeJob

pytestmark = pytest.mark.django_db


def merge_here(job_id: int) -> str | None:
    """The task's claim, then what the merge process runs, in this process (as test_merges.py does)."""
    assert merges.claim(job_id) is not None
    return merges.compute(job_id)


def merged_versions(adapter: ModelVersion) -> list[int]:
    return list(
        ModelVersion.objects.filter(parent_version=adapter, source=Source.MERGE).values_list(
            "number", flat=True
        )
    )


def test_an_adapter_already_merged_is_not_merged_again_until_its_merged_version_is_archived(
    versions, engineer, client, org
):
    _, adapter = versions
    first = merging.request_merge(actor=engineer, version=adapter)
    assert merge_here(first.id) == JobStatus.SUCCEEDED
    merged = MergeJob.objects.get(pk=first.id).output_version

    with pytest.raises(Conflict, match=f"already merged as {merged.label}; archive {merged.label}"):
        merging.request_merge(actor=engineer, version=adapter)
    client.force_login(org["engineer"])
    response = client.post(f"/api/v1/models/{adapter.model.name}/versions/{adapter.number}/merge")
    assert response.status_code == 409, response.content
    page = client.get(f"/models/{adapter.model.name}/v{adapter.number}/").content.decode()
    assert f"Merged as {merged.label}" in page
    assert f'action="/models/{adapter.model.name}/v{adapter.number}/merge/"' not in page
    assert MergeJob.objects.count() == 1 and merged_versions(adapter) == [merged.number]

    registry.archive_version(actor=engineer, version=merged)
    page = client.get(f"/models/{adapter.model.name}/v{adapter.number}/").content.decode()
    assert f'action="/models/{adapter.model.name}/v{adapter.number}/merge/"' in page
    assert merging.request_merge(actor=engineer, version=adapter).id != first.id


def test_a_merge_queued_before_the_first_registered_fails_before_it_merges(versions, engineer, monkeypatch):
    _, adapter = versions
    first = merging.request_merge(actor=engineer, version=adapter)
    assert merge_here(first.id) == JobStatus.SUCCEEDED
    merged = MergeJob.objects.get(pk=first.id).output_version
    # Requested before the first one registered (its check passed then), taken up after.
    second = MergeJob.objects.create(adapter=adapter, owner_team=adapter.model.owner_team)

    def merge_directory(*args):
        raise AssertionError("the weights were merged again")

    monkeypatch.setattr(weights, "merge_directory", merge_directory)
    assert merge_here(second.pk) == JobStatus.FAILED
    second.refresh_from_db()
    assert f"already merged as {merged.label}" in second.status_detail
    assert second.output_version is None and merged_versions(adapter) == [merged.number]


def test_a_merge_that_finds_the_adapter_merged_meanwhile_registers_nothing(versions, engineer, monkeypatch):
    """Its process checked before merging; another merged version appeared while it merged: the check under
    the adapter's row lock at registration refuses it."""
    _, adapter = versions
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    merge = weights.merge_directory

    def merged_meanwhile(*args):
        ModelVersion.objects.create(
            model=adapter.model,
            number=9,
            kind=VersionKind.BASE,
            parent_version=adapter,
            source=Source.MERGE,
            status=VersionStatus.READY,
        )
        return merge(*args)

    monkeypatch.setattr(weights, "merge_directory", merged_meanwhile)
    assert merge_here(job_id) == JobStatus.FAILED
    job = MergeJob.objects.get(pk=job_id)
    assert f"already merged as {adapter.model.name}:v9" in job.status_detail
    assert job.output_version is None and merged_versions(adapter) == [9]
