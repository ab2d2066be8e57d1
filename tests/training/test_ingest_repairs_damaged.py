"""The same rows uploaded again repair a dataset version whose stored files are damaged: split as it was,
the upload's files are stored again over the damaged blobs and checked again, the version reads again, and
the upload says it repaired the version (no new version: ``created_version`` stays false).

Found by review: ``ingest.prepare`` returned the existing version early and ``record`` reused it, storing
nothing, so a damaged version could never be read again (its page asks for the files to be stored again).
"""

from __future__ import annotations

import io
import json

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from portfolio.registry.choices import Health
from portfolio.registry.models import Artifact
from tests.training.conftest import damage, jsonl, tickets, upload, work_off_ingests
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db

ROWS = tickets(20)


def _found_damaged(client, dataset_id: int) -> None:
    """A read finds the damage (a 409), which marks the version's artifact corrupt."""
    response = client.get(f"/api/v1/datasets/{dataset_id}/versions/1/rows")
    assert response.status_code == 409, response.content


def _uploaded(client, dataset_id: int, content: bytes, **fields) -> dict:
    """An upload through the API, run by a worker: its ingest as the API shows it then."""
    handle = io.BytesIO(content)
    handle.name = "rows.jsonl"
    accepted = client.post(f"/api/v1/datasets/{dataset_id}/versions", {"file": handle, **fields})
    assert accepted.status_code == 202, accepted.content
    work_off_ingests()
    return client.get(f"/api/v1/datasets/{dataset_id}/ingests/{accepted.json()['id']}").json()


def test_the_same_file_uploaded_again_stores_a_missing_file_again(client, org, engineer, chat_set):
    version, _ = upload(engineer, chat_set, jsonl(*ROWS))
    artifact_id = version.artifact_id
    damage(version, "train.jsonl", None)
    client.force_login(org["engineer"])
    _found_damaged(client, chat_set.pk)

    ingest = _uploaded(client, chat_set.pk, jsonl(*ROWS))

    assert ingest["status"] == "succeeded" and ingest["version"] == 1, ingest
    assert ingest["created_version"] is False
    assert ingest["progress_detail"].startswith("repaired v1: its damaged files were stored again"), ingest
    response = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows")
    assert response.status_code == 200, response.content
    repaired = DatasetVersion.objects.select_related("artifact").get(pk=version.pk)
    assert repaired.artifact_id == artifact_id, "the same files: the version keeps its artifact"
    assert repaired.artifact.health == Health.OK
    assert chat_set.versions.count() == 1
    event = AuditEvent.objects.get(action="dataset.ingest_reused", object_id=str(ingest["id"]))
    assert event.after == {"version": 1, "repaired": True}
    page_url = reverse("dataset-ingest", args=[chat_set.owner_team.slug, chat_set.name, ingest["id"]])
    page = client.get(page_url, follow=True)
    assert "whose stored files were damaged: stored again" in page.content.decode()


def test_an_overwritten_file_is_stored_again_whole(client, org, engineer, chat_set):
    version, _ = upload(engineer, chat_set, jsonl(*ROWS))
    damage(version, "eval.jsonl", b"{}\n")
    client.force_login(org["engineer"])
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/eval.jsonl").status_code == 409

    assert _uploaded(client, chat_set.pk, jsonl(*ROWS))["status"] == "succeeded"

    response = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/eval.jsonl")
    assert response.status_code == 200, response.content
    assert b"".join(response.streaming_content) != b"{}\n"


def test_the_same_rows_sent_otherwise_give_a_damaged_version_the_uploads_files(
    client, org, engineer, chat_set, django_capture_on_commit_callbacks
):
    """Only the upload as sent (``original.jsonl``) differs: the version takes the upload's files, as a purged
    one does, and its damaged artifact goes once nothing refers to it."""
    version, _ = upload(engineer, chat_set, jsonl(*ROWS))
    damaged_id = version.artifact_id
    damage(version, "original.jsonl", None)
    client.force_login(org["engineer"])
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/original.jsonl").status_code == 409
    spaced = "".join(json.dumps(row, indent=None, separators=(", ", " : ")) + "\n" for row in ROWS)

    with django_capture_on_commit_callbacks(execute=True):
        ingest = _uploaded(client, chat_set.pk, spaced.encode())

    assert (ingest["status"], ingest["version"], ingest["created_version"]) == ("succeeded", 1, False)
    repaired = DatasetVersion.objects.get(pk=version.pk)
    assert repaired.artifact_id != damaged_id
    response = client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/files/original.jsonl")
    assert b"".join(response.streaming_content) == spaced.encode()
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/versions/1/rows").status_code == 200
    assert not Artifact.objects.filter(pk=damaged_id).exists()
    event = AuditEvent.objects.get(action="dataset_version.restore", object_id=str(version.pk))
    assert (event.before["artifact"], event.after["artifact"]) == (damaged_id, repaired.artifact_id)


def test_the_same_rows_split_otherwise_than_a_damaged_version_are_refused_saying_how(
    client, org, engineer, chat_set
):
    version, _ = upload(engineer, chat_set, jsonl(*ROWS))
    damage(version, "train.jsonl", None)
    client.force_login(org["engineer"])
    _found_damaged(client, chat_set.pk)
    with pytest.raises(Invalid, match="whose stored files are damaged. Upload them with eval fraction"):
        upload(engineer, chat_set, jsonl(*ROWS), eval_fraction=0.3)
    assert chat_set.versions.count() == 1


def test_a_healthy_version_uploaded_again_is_reused_untouched(engineer, chat_set):
    version, _ = upload(engineer, chat_set, jsonl(*ROWS))
    again, created = upload(engineer, chat_set, jsonl(*ROWS))
    assert (again.pk, again.artifact_id, created) == (version.pk, version.artifact_id, False)
    assert not AuditEvent.objects.filter(action="dataset_version.restore").exists()
