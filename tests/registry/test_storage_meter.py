"""The storage meter: each day, the bytes of the artifacts each team keeps (model versions, and through
training's registered hook its dataset versions and job checkpoints), each stored file charged once, to the
team that kept an artifact holding it first, in the configured store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.billing.models import StorageDay
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.tasks import meter_storage
from tests.conftest import actor_for
from tests.registry.conftest import ready_base

pytestmark = pytest.mark.django_db
EARLIER = timezone.now() - timedelta(days=30)


def _artifact(letter: str, size: int, *shared: tuple[str, int]) -> Artifact:
    """An artifact of one file of its own (``size`` bytes) and ``shared`` files (sha256 letter, size)."""
    files = [{"path": "own", "size": size, "sha256": letter * 64}]
    files += [{"path": f"shared-{sha}", "size": n, "sha256": sha * 64} for sha, n in shared]
    return Artifact.objects.create(
        id=letter * 64,
        store_uri="file:///x",
        size_bytes=sum(f["size"] for f in files),
        file_count=len(files),
        files=files,
    )


def _version(org, team, name: str, artifact: Artifact, *, created_at=None) -> ModelVersion:
    return ready_base(actor_for(org["admin"]), team, name, artifact, created_at=created_at or timezone.now())


def _stored() -> dict:
    return {
        (row.day, row.team_id): (row.department_id, row.store, row.bytes) for row in StorageDay.objects.all()
    }


def test_each_team_is_charged_once_a_day_for_the_artifacts_it_keeps_each_artifact_once(org, team, other_team):
    shared = _artifact("a", 1000)
    _version(org, team, "first-keeper", shared, created_at=EARLIER)
    _version(org, other_team, "second-keeper", shared)  # the same files: charged to the first keeper only
    _version(org, other_team, "own", _artifact("b", 250))
    _artifact("c", 10**9)  # kept by nobody any longer: charged to nobody
    today = timezone.now().date()

    assert meter_storage() == 2
    assert meter_storage() == 2, "a rerun the same day replaces the day's rows"
    assert _stored() == {
        (today, team.pk): (team.department_id, settings.ARTIFACT_STORE, 1000),
        (today, other_team.pk): (other_team.department_id, settings.ARTIFACT_STORE, 250),
    }


def test_a_file_two_artifacts_share_is_charged_once_to_its_first_keeper(org, team, other_team):
    """A version with a new chat template shares every file of its parent but its tokenizer config: each
    artifact's whole size was charged, a 17B model twice for one template change."""
    _version(org, team, "base", _artifact("a", 10, ("w", 5000)), created_at=EARLIER)
    _version(org, team, "base-with-template", _artifact("b", 20, ("w", 5000)))  # the same weights
    _version(org, other_team, "theirs", _artifact("c", 30, ("w", 5000)))  # kept later by another team
    today = timezone.now().date()
    meter_storage()
    assert _stored() == {
        (today, team.pk): (team.department_id, settings.ARTIFACT_STORE, 10 + 20 + 5000),
        (today, other_team.pk): (other_team.department_id, settings.ARTIFACT_STORE, 30),
    }


def test_training_datasets_and_checkpoints_are_charged_to_their_teams_through_its_hook(org, team, other_team):
    from serving.models import ComputePool
    from training.models import Dataset, DatasetVersion, FineTuneJob

    base = _version(org, team, "base", _artifact("a", 100))
    dataset = Dataset.objects.create(name="tickets", owner_team=other_team)
    DatasetVersion.objects.create(
        dataset=dataset,
        number=1,
        shape="chat",
        artifact=_artifact("d", 40),
        content_sha256="0" * 64,
        row_count=1,
        train_count=1,
        eval_count=0,
        eval_fraction=0.0,
        split_seed=1,
        size_bytes=40,
    )
    FineTuneJob.objects.create(
        owner_team=other_team,
        base_version=base,
        dataset_version=DatasetVersion.objects.get(),
        target_model=base.model,
        pool=ComputePool.objects.create(name="cpu", kind="cpu"),
        checkpoint=_artifact("e", 7),
    )
    meter_storage()
    today = timezone.now().date()
    assert {team_id: figures[2] for (_, team_id), figures in _stored().items() if _ == today} == {
        team.pk: 100,
        other_team.pk: 47,
    }


def test_the_storage_meter_runs_at_least_daily():
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "registry.meter_storage")
    assert entry["schedule"] <= 24 * 3600
