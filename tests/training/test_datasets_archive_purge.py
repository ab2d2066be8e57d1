"""A dataset version's stored files are billed every day while kept: an owner or engineer of its team may
archive it and then delete its files, as for model versions. Both are audited and refused while something
reads the files; the files go after commit, except those another artifact holds; the version's row stays,
and the storage meter stops counting it."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict
from portfolio.registry import storage_meter
from portfolio.registry.models import Artifact
from portfolio.registry.stores import default_store
from tests.conftest import actor_for
from tests.training.conftest import jsonl, tickets, upload
from training import dataset_purge, services
from training.choices import DatasetKind, JobStatus
from training.evals import catalogue
from training.models import DatasetVersion, EndpointEvalRun

pytestmark = pytest.mark.django_db
ROWS = jsonl(*tickets(20))


def _blobs(version: DatasetVersion) -> dict[str, str]:
    return {entry["path"]: entry["sha256"] for entry in version.artifact.files}


def _url(dataset, number: int = 1, action: str = "") -> str:
    return f"/api/v1/datasets/{dataset.pk}/versions/{number}" + (f"/{action}" if action else "")


@pytest.fixture
def version(engineer, chat_set) -> DatasetVersion:
    made, _ = upload(engineer, chat_set, ROWS)
    return made


@pytest.fixture
def twin(engineer, team) -> DatasetVersion:
    """The same upload in another dataset of the team, split otherwise: only ``original.jsonl`` is shared."""
    other = services.create_dataset(actor=engineer, owner_team=team, name="copy", kind=DatasetKind.CHAT)
    made, _ = upload(engineer, other, ROWS, eval_fraction=0.2)
    return made


def test_the_api_archives_then_deletes_the_files_keeping_the_row_and_shared_files(
    client, org, team, settings, chat_set, version, twin, django_capture_on_commit_callbacks
):
    mine, shared = _blobs(version), _blobs(twin)
    assert mine["original.jsonl"] == shared["original.jsonl"] and mine["train.jsonl"] != shared["train.jsonl"]
    artifact_id = version.artifact_id
    assert artifact_id in storage_meter.keepers()
    client.force_login(org["engineer"])

    archived = client.post(_url(chat_set, action="archive"))
    assert archived.status_code == 200, archived.content
    assert archived.json()["status"] == "archived" and archived.json()["artifact_id"] == artifact_id
    event = AuditEvent.objects.get(action="dataset_version.archive", object_id=str(version.pk))
    assert (event.before["status"], event.after["status"]) == ("ready", "archived")
    assert event.team_id == team.pk

    with django_capture_on_commit_callbacks(execute=True):
        purged = client.post(_url(chat_set, action="purge"))

    assert purged.status_code == 200, purged.content
    assert purged.json()["artifact_id"] is None and purged.json()["status"] == "archived"
    kept = DatasetVersion.objects.get(pk=version.pk)
    assert kept.artifact_id is None and kept.row_count == 20 and kept.content_sha256 == version.content_sha256
    store = default_store()
    assert not Artifact.objects.filter(pk=artifact_id).exists()
    assert not (store.root / "manifests" / f"{artifact_id}.json").exists()
    assert not store.has_blob(mine["train.jsonl"]) and not store.has_blob(mine["eval.jsonl"])
    assert all(store.has_blob(sha) for sha in shared.values()), "a blob another version holds stays"
    event = AuditEvent.objects.get(action="dataset_version.purge", object_id=str(version.pk))
    assert event.before["artifact"] == artifact_id and event.after["artifact"] is None
    assert artifact_id not in storage_meter.keepers()
    assert storage_meter.usage() == [
        (
            team.pk,
            team.department_id,
            settings.ARTIFACT_STORE,
            sum(int(f["size"]) for f in twin.artifact.files),
        )
    ]
    # Still listed and described; its rows and files are refused, saying why.
    detail = client.get(_url(chat_set))
    assert detail.status_code == 200 and detail.json()["files"] == []
    rows = client.get(_url(chat_set, action="rows"))
    assert rows.status_code == 409 and rows.json()["error"]["code"] == "purged"
    assert client.get(_url(chat_set, action="files/train.jsonl")).status_code == 409
    again = client.post(_url(chat_set, action="purge"))
    assert again.status_code == 409 and "no stored files" in again.json()["error"]["message"]


def test_files_another_dataset_version_refers_to_stay(
    engineer, team, chat_set, version, django_capture_on_commit_callbacks
):
    other = services.create_dataset(actor=engineer, owner_team=team, name="same", kind=DatasetKind.CHAT)
    same, _ = upload(engineer, other, ROWS)
    assert same.artifact_id == version.artifact_id
    dataset_purge.archive_version(actor=engineer, version=version)
    with django_capture_on_commit_callbacks(execute=True):
        dataset_purge.purge_version(actor=engineer, version=version)
    assert Artifact.objects.filter(pk=same.artifact_id).exists()
    assert all(default_store().has_blob(sha) for sha in _blobs(same).values())
    assert same.artifact_id in storage_meter.keepers()
    assert services.split_rows(same, "train")[0]["row"] is not None


def test_a_ready_version_is_refused_archive_it_first(client, org, chat_set, version):
    client.force_login(org["engineer"])
    response = client.post(_url(chat_set, action="purge"))
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "conflict" and "archive it first" in error["message"]
    assert DatasetVersion.objects.get(pk=version.pk).artifact_id == version.artifact_id
    assert all(default_store().has_blob(sha) for sha in _blobs(version).values())
    assert not AuditEvent.objects.filter(action="dataset_version.purge").exists()


def test_archiving_an_archived_version_again_is_refused(client, org, engineer, chat_set, version):
    dataset_purge.archive_version(actor=engineer, version=version)
    client.force_login(org["engineer"])
    response = client.post(_url(chat_set, action="archive"))
    assert response.status_code == 409 and "archived already" in response.json()["error"]["message"]
    assert AuditEvent.objects.filter(action="dataset_version.archive").count() == 1


def test_a_version_a_queued_fine_tune_trains_on_is_refused_archive_and_purge(
    client, org, engineer, chat_set, dataset_version, make_job
):
    job = make_job()
    client.force_login(org["engineer"])
    response = client.post(_url(chat_set, action="archive"))
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (
        "conflict",
        f"tickets:v1 cannot be archived: fine-tune #{job.pk} is using it.",
    )
    assert error["request_id"]
    assert DatasetVersion.objects.get(pk=dataset_version.pk).status == "ready"
    # Archived once the job ended; a job recorded since (as a race would) keeps the files.
    job.status = JobStatus.SUCCEEDED
    job.save(update_fields=["status"])
    assert client.post(_url(chat_set, action="archive")).status_code == 200
    second = make_job(status=JobStatus.RUNNING)
    response = client.post(_url(chat_set, action="purge"))
    assert response.status_code == 409
    assert f"fine-tune #{second.pk} is using it" in response.json()["error"]["message"]
    assert DatasetVersion.objects.get(pk=dataset_version.pk).artifact_id == dataset_version.artifact_id


def test_a_distillations_answers_in_training_are_in_use(engineer, chat_set, dataset_version, make_job):
    make_job(distilled_dataset_version=dataset_version, status=JobStatus.RUNNING)
    with pytest.raises(Conflict, match=r"distillation #\d+ is using it"):
        dataset_purge.archive_version(actor=engineer, version=dataset_version)


def test_an_eval_run_in_flight_and_an_upload_being_ingested_are_in_use(engineer, team, chat_set, version):
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
    dataset_purge.archive_version(actor=engineer, version=version)
    run = EndpointEvalRun.objects.create(owner_team=team, eval_set=eval_set, endpoint_name="ep", row_limit=5)
    services.upload_version(
        actor=engineer, dataset=chat_set, chunks=[jsonl(*tickets(3))], filename="more.jsonl", enqueue=False
    )
    with pytest.raises(Conflict) as refused:
        dataset_purge.purge_version(actor=engineer, version=version)
    assert f"eval run #{run.pk} is using it" in refused.value.message
    assert "an upload of tickets is being ingested" in refused.value.message
    assert DatasetVersion.objects.get(pk=version.pk).artifact_id is not None


def test_a_purge_undone_with_its_transaction_deletes_nothing(
    engineer, version, django_capture_on_commit_callbacks
):
    dataset_purge.archive_version(actor=engineer, version=version)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        dataset_purge.purge_version(actor=engineer, version=version)
        raise RuntimeError("the caller's transaction fails after the purge")
    assert DatasetVersion.objects.get(pk=version.pk).artifact_id == version.artifact_id
    assert all(default_store().has_blob(sha) for sha in _blobs(version).values())


def test_a_viewer_is_refused_and_another_teams_version_is_not_found(client, org, other_team, version):
    client.force_login(org["viewer"])
    for action in ("archive", "purge"):
        assert client.post(_url(version.dataset, action=action)).status_code == 403
    theirs_set = services.create_dataset(
        actor=actor_for(org["outsider"]), owner_team=other_team, name="theirs", kind=DatasetKind.CHAT
    )
    theirs, _ = upload(actor_for(org["outsider"]), theirs_set, jsonl(*tickets(8)))
    client.force_login(org["engineer"])
    for action in ("archive", "purge"):
        response = client.post(_url(theirs_set, action=action))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert DatasetVersion.objects.get(pk=theirs.pk).status == "ready"
    assert not AuditEvent.objects.filter(action__startswith="dataset_version.a").exists()


def test_the_buttons_on_the_version_page_archive_it_then_delete_its_files(signed_in, org, team, version):
    page = reverse("dataset-version", args=[team.slug, "tickets", 1])
    archive = reverse("dataset-version-archive", args=[team.slug, "tickets", 1])
    purge = reverse("dataset-version-purge", args=[team.slug, "tickets", 1])
    download = f"/api/v1/datasets/{version.dataset_id}/versions/1/files/"
    shown = signed_in(org["viewer"]).get(page).content.decode()
    assert archive not in shown and purge not in shown
    assert signed_in(org["viewer"]).post(archive).status_code == 403
    client = signed_in(org["engineer"])
    shown = client.get(page).content.decode()
    assert archive in shown and purge not in shown and download in shown

    text = client.post(archive, follow=True).content.decode()

    assert "tickets:v1 archived" in text and purge in text and "Delete stored files" in text
    assert archive not in text
    assert signed_in(org["viewer"]).post(purge).status_code == 403
    text = signed_in(org["engineer"]).post(purge, follow=True).content.decode()

    assert "stored files were deleted" in text and "by engineer" in text
    assert "Delete stored files" not in text and download not in text
    assert "were deleted; its rows can no longer be read" in text
    assert DatasetVersion.objects.get(pk=version.pk).artifact_id is None
    listing = client.get(reverse("dataset-detail", args=[team.slug, "tickets"])).content.decode()
    assert "files deleted" in listing


def test_a_refused_button_says_why(signed_in, org, team, dataset_version, make_job):
    job = make_job()
    archive = reverse("dataset-version-archive", args=[team.slug, "tickets", 1])
    text = signed_in(org["engineer"]).post(archive, follow=True).content.decode()
    assert f"fine-tune #{job.pk} is using it" in text
    assert DatasetVersion.objects.get(pk=dataset_version.pk).status == "ready"
