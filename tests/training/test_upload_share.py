"""A team keeps at most ``UPLOADS_PER_TEAM`` uploads waiting on disk for a long worker: its dataset ingests
queued or running and its adapter archives still importing. Found by review: one engineer had 50 uploads of
up to 2 GiB each accepted, every one kept in the uploads folder until one of two long workers took it up.
The adapter archives' side is tests/registry/test_upload_share.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict
from portfolio.registry import services as registry
from portfolio.registry.choices import Source
from tests.conftest import actor_for
from tests.training.conftest import jsonl, tickets
from training import services, tasks
from training.choices import JobStatus
from training.models import DatasetIngest

pytestmark = pytest.mark.django_db

ROWS = jsonl(*tickets(20))


def waiting_files() -> list[Path]:
    folder = Path(settings.DATA_DIR) / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


def queue_upload(actor, dataset) -> DatasetIngest:
    """An upload as the API and the form make it: stored, its ingest queued for a worker."""
    return services.upload_version(actor=actor, dataset=dataset, chunks=[ROWS], filename="rows.jsonl")


def never_read():
    raise AssertionError("the refused upload's bytes were read")
    yield b""  # a generator: its first chunk is asked for only when the upload is written


def test_a_teams_fifth_waiting_upload_is_refused_before_a_byte_is_written(engineer, chat_set):
    for _ in range(4):
        queue_upload(engineer, chat_set)
    with pytest.raises(Conflict, match=r"has 4 upload\(s\) waiting to be imported or ingested.*\(4\)"):
        services.upload_version(actor=engineer, dataset=chat_set, chunks=never_read(), filename="rows.jsonl")
    assert DatasetIngest.objects.count() == 4
    assert len(waiting_files()) == 4
    assert AuditEvent.objects.filter(action="dataset.upload").count() == 4


def test_an_upload_counted_again_under_the_lock_leaves_no_file_behind(engineer, chat_set, monkeypatch):
    """Counted before the bytes are written and again under the team's lock: an upload that lost the race
    for the last place (here, the first count let through) is refused and its file deleted."""
    for _ in range(4):
        queue_upload(engineer, chat_set)
    real, counted = services.ingests_waiting, []

    def first_count_misses_them(team) -> int:
        counted.append(team)
        return 0 if len(counted) == 1 else real(team)

    monkeypatch.setattr(services, "ingests_waiting", first_count_misses_them)
    with pytest.raises(Conflict, match=r"has 4 upload\(s\) waiting"):
        queue_upload(engineer, chat_set)
    assert DatasetIngest.objects.count() == 4 and len(waiting_files()) == 4


def test_another_teams_uploads_are_not_held_back(engineer, chat_set, org, other_team):
    for _ in range(4):
        queue_upload(engineer, chat_set)
    outsider = actor_for(org["outsider"])
    theirs = services.create_dataset(actor=outsider, owner_team=other_team, name="contracts")
    assert queue_upload(outsider, theirs).status == JobStatus.QUEUED


def test_once_an_ingest_ends_the_team_may_upload_again(engineer, chat_set):
    first, *_ = [queue_upload(engineer, chat_set) for _ in range(4)]
    tasks.ingest_dataset(first.pk)  # as a worker would: ingested, its file deleted
    first.refresh_from_db()
    assert first.status == JobStatus.SUCCEEDED, first.status_detail
    assert queue_upload(engineer, chat_set).status == JobStatus.QUEUED
    assert len(waiting_files()) == 4


def test_adapter_archives_still_importing_count_against_dataset_uploads(engineer, chat_set, team, base):
    model = registry.create_model(actor=engineer, name="router-adapters", owner_team=team)
    for number in range(2):
        registry.start_import(
            actor=engineer, model=model, source=Source.UPLOAD, ref="adapter.zip", base_version=base,
            upload_path=Path(settings.DATA_DIR) / "uploads" / f"{number}.zip",
        )  # fmt: skip
    queue_upload(engineer, chat_set)
    queue_upload(engineer, chat_set)
    with pytest.raises(Conflict, match=r"has 4 upload\(s\) waiting"):
        queue_upload(engineer, chat_set)


def test_a_worker_that_ingests_its_upload_itself_is_not_refused(engineer, chat_set):
    """A distillation's answers are ingested by the worker that wrote them (``enqueue=False``): they wait
    for no other worker, and a team's waiting uploads do not fail a distillation at its end."""
    for _ in range(4):
        queue_upload(engineer, chat_set)
    services.upload_version(
        actor=engineer, dataset=chat_set, chunks=[ROWS], filename="rows.jsonl", enqueue=False
    )
    assert DatasetIngest.objects.count() == 5


def test_the_api_answers_409_and_the_form_says_why(client, org, engineer, chat_set, settings):
    settings.UPLOADS_PER_TEAM = 1
    queue_upload(engineer, chat_set)
    client.force_login(org["engineer"])
    handle = io.BytesIO(ROWS)
    handle.name = "rows.jsonl"
    response = client.post(f"/api/v1/datasets/{chat_set.pk}/versions", {"file": handle})
    assert response.status_code == 409, response.content
    assert "has 1 upload(s) waiting" in response.json()["error"]["message"]

    handle.seek(0)
    url = reverse("dataset-upload", kwargs={"team": chat_set.owner_team.slug, "name": chat_set.name})
    page = client.post(url, {"file": handle, "eval_fraction": "0.1", "seed": "42"})
    assert page.status_code == 200 and "has 1 upload(s) waiting" in page.content.decode()
    assert DatasetIngest.objects.count() == 1 and len(waiting_files()) == 1
