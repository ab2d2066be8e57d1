"""The ingest job: an upload is stored and queued; a worker checks, splits and measures it into a version,
with a progress figure, once per ingest whatever the broker redelivers; a refusal keeps its lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.leases import Lease
from portfolio.registry.models import Artifact, PendingWrite
from portfolio.registry.stores import default_store
from tests.training.conftest import chat, jsonl, tickets, upload
from training import ingest, ingest_splits, services, tasks
from training.choices import JobStatus
from training.models import DatasetIngest, DatasetVersion

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def queue_upload(actor, dataset, content: bytes, **options) -> DatasetIngest:
    return services.upload_version(
        actor=actor, dataset=dataset, chunks=[content], filename="rows.jsonl", enqueue=False, **options
    )


def ingest_url(pending: DatasetIngest) -> str:
    dataset = pending.dataset
    return reverse(
        "dataset-ingest",
        kwargs={"team": dataset.owner_team.slug, "name": dataset.name, "ingest_id": pending.pk},
    )


def test_an_upload_is_stored_and_queued_and_a_worker_makes_the_version(
    engineer, chat_set, django_capture_on_commit_callbacks, monkeypatch
):
    sent: list[int] = []
    # Sent by the task's name (services does not import the task module): what reaches the registered task.
    monkeypatch.setattr(
        tasks.ingest_dataset, "apply_async", lambda args=None, kwargs=None, **options: sent.extend(args)
    )
    with django_capture_on_commit_callbacks(execute=True):
        pending = services.upload_version(
            actor=engineer, dataset=chat_set, chunks=[jsonl(*tickets(40))], filename="tickets.jsonl"
        )
    assert sent == [pending.pk] and pending.status == JobStatus.QUEUED
    assert Path(pending.upload_path).read_bytes() == jsonl(*tickets(40))
    assert not DatasetVersion.objects.exists()
    upload = AuditEvent.objects.get(action="dataset.upload")
    assert upload.after["source_filename"] == "tickets.jsonl" and upload.team_id == chat_set.owner_team_id

    tasks.ingest_dataset(pending.pk)
    pending.refresh_from_db()
    version = DatasetVersion.objects.get()
    assert (pending.status, pending.version, pending.created_version) == (JobStatus.SUCCEEDED, version, True)
    assert (pending.progress, pending.rows_done, pending.rows_total) == (100, 40, 40)
    assert pending.started_at <= pending.finished_at
    assert (version.row_count, version.source_filename, version.created_by) == (
        40,
        "tickets.jsonl",
        engineer.user,
    )
    assert AuditEvent.objects.get(action="dataset_version.create").actor_user_id == engineer.user.pk
    assert not Path(pending.upload_path).exists()  # the upload is deleted once ingested

    tasks.ingest_dataset(pending.pk)  # a late redelivery finds it finished and changes nothing
    assert DatasetVersion.objects.count() == 1


def test_a_refused_file_fails_its_ingest_with_the_lines_kept_and_nothing_else(engineer, chat_set, settings):
    content = jsonl(chat("a", "billing"), "{oops", "", {"messages": [{"role": "user", "content": "?"}]})
    pending = queue_upload(engineer, chat_set, content)
    tasks.ingest_dataset(pending.pk)  # the refusal is the job's outcome, not a task error
    pending.refresh_from_db()
    assert pending.status == JobStatus.FAILED and pending.version is None
    assert pending.status_detail.startswith("file: 2 problems in 4 lines")
    assert [error["line"] for error in pending.problems["errors"]] == [2, 4]
    assert pending.problems["empty_line_numbers"] == [3]
    refused = ingest.refusal(pending)
    assert refused.code == "invalid_dataset" and refused.fields["file"][0].startswith(
        "line 2: not valid JSON"
    )
    assert not DatasetVersion.objects.exists() and not Artifact.objects.exists()
    assert not Path(pending.upload_path).exists()
    assert list((Path(settings.DATA_DIR) / "work").iterdir()) == []


def test_rows_are_measured_in_batches_bounded_in_bytes_as_well_as_rows(engineer, chat_set, monkeypatch):
    """Big rows are measured a few at a time: a batch of 1,024 rows of 1 MiB each, rendered and tokenized
    at once, would take the worker's memory."""
    from training import tokens

    monkeypatch.setattr(ingest_splits, "BATCH_BYTES", 300)
    batches = []
    real = tokens.lengths
    monkeypatch.setattr(tokens, "lengths", lambda rows, *args: batches.append(len(rows)) or real(rows, *args))
    rows = [chat(f"ticket {i} " + "words " * 20, "billing") for i in range(6)]
    version, _ = upload(engineer, chat_set, jsonl(*rows))
    assert version.train_count + version.eval_count == 6
    assert sum(batches) == 6 and max(batches) < 6, batches


def test_a_bug_during_the_ingest_marks_it_errored_and_keeps_no_version(engineer, chat_set, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ingest, "store_directory", broken)
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    with pytest.raises(OSError):
        tasks.ingest_dataset(pending.pk)
    pending.refresh_from_db()
    assert pending.status == JobStatus.ERRORED and "OSError" in pending.status_detail
    assert not DatasetVersion.objects.exists() and not Artifact.objects.exists()


def test_an_ingest_given_up_while_it_ran_records_no_version(engineer, chat_set, monkeypatch):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    prepare = ingest.prepare

    def given_up_meanwhile(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        # The reaper gave it up while this run, silent too long, was still storing.
        DatasetIngest.objects.filter(pk=pending.pk).update(status=JobStatus.ERRORED, status_detail="given up")
        return prepared

    monkeypatch.setattr(ingest, "prepare", given_up_meanwhile)
    tasks.ingest_dataset(pending.pk)
    pending.refresh_from_db()
    assert pending.status == JobStatus.ERRORED and pending.status_detail == "given up"
    assert pending.version is None
    assert not DatasetVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="dataset_version.create").exists()


def test_what_an_ingest_that_recorded_nothing_stored_leaves_the_store(engineer, chat_set, monkeypatch):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    prepare, made = ingest.prepare, []

    def given_up_meanwhile(*args, **kwargs):
        made.append(prepared := prepare(*args, **kwargs))
        DatasetIngest.objects.filter(pk=pending.pk).update(status=JobStatus.ERRORED, status_detail="given up")
        return prepared

    monkeypatch.setattr(ingest, "prepare", given_up_meanwhile)
    tasks.ingest_dataset(pending.pk)
    store = default_store()
    manifest = made[0].manifest
    assert manifest is not None and manifest.files
    assert not any(store.has_blob(entry.sha256) for entry in manifest.files)
    assert not (store.root / "manifests" / f"{manifest.artifact_id}.json").exists()
    assert not PendingWrite.objects.exists(), "deleted by the run itself: nothing left for the sweep"


def test_an_upload_of_rows_recorded_meanwhile_leaves_only_the_recorded_files(engineer, chat_set, monkeypatch):
    first = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    again = queue_upload(engineer, chat_set, jsonl(*tickets(12)), eval_fraction=0.5)  # other split files
    prepare = ingest.prepare

    def first_recorded_meanwhile(pending, *args, **kwargs):
        prepared = prepare(pending, *args, **kwargs)
        if pending.pk == again.pk:  # stored; the same rows' other upload is recorded before this one is
            tasks.ingest_dataset(first.pk)
        return prepared

    monkeypatch.setattr(ingest, "prepare", first_recorded_meanwhile)
    tasks.ingest_dataset(again.pk)
    again.refresh_from_db()
    assert again.status == JobStatus.SUCCEEDED and not again.created_version
    recorded = {entry["sha256"] for artifact in Artifact.objects.all() for entry in artifact.files}
    store = default_store()
    stored = {path.name for path in (store.root / "blobs").rglob("*") if path.is_file()}
    assert stored == recorded


def _ingest_writes(actor, dataset, monkeypatch, every: float) -> tuple[int, list[bool]]:
    """Ingest 5,000 rows with progress paced at one write per ``every`` seconds: the ingest row's updates, and
    the progress reports the ingest made (each a point where it may write), whether each was forced."""
    monkeypatch.setattr(ingest, "REPORT_EVERY_SECONDS", every)
    reports, report = [], ingest._Progress.__call__

    def noted(self, *args, **kwargs):
        reports.append(kwargs.get("force", False))
        return report(self, *args, **kwargs)

    monkeypatch.setattr(ingest._Progress, "__call__", noted)
    pending = queue_upload(actor, dataset, jsonl(*tickets(5000)))
    with CaptureQueriesContext(connection) as queries:
        tasks.ingest_dataset(pending.pk)
    pending.refresh_from_db()
    assert pending.status == JobStatus.SUCCEEDED and pending.rows_done == pending.rows_total == 5000
    updates = [q for q in queries.captured_queries if q["sql"].startswith('UPDATE "training_datasetingest"')]
    return len(updates), reports


def test_progress_between_its_paced_writes_writes_nothing(engineer, chat_set, monkeypatch):
    """The pace never reached, whatever the runner's speed: the claim, one write per phase and the end."""
    updates, reports = _ingest_writes(engineer, chat_set, monkeypatch, float("inf"))
    forced = reports.count(True)
    assert forced == 3 and updates == 1 + forced + 1 and len(reports) > forced, (updates, reports)


def test_progress_is_written_at_most_once_per_report_point_never_per_row(engineer, chat_set, monkeypatch):
    """The pace always reached (a slow runner at worst): a write per report point, and those come every
    thousand rows or so, not at every row."""
    updates, reports = _ingest_writes(engineer, chat_set, monkeypatch, 0.0)
    assert updates == 1 + len(reports) + 1 and len(reports) < 5000 // 100, (updates, reports)


def test_a_redelivered_ingest_leaves_a_live_run_alone(engineer, chat_set):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    live = Lease(f"training.ingest_dataset:{pending.pk}", seconds=3)
    assert live.acquire(wait=False)
    with live.kept():
        tasks.ingest_dataset(pending.pk)  # finds the lease held by a live holder and leaves at once
    pending.refresh_from_db()
    assert pending.status == JobStatus.QUEUED and Path(pending.upload_path).exists()
    assert not DatasetVersion.objects.exists()


def test_a_run_that_died_is_taken_over_from_the_start(engineer, chat_set):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    assert ingest.claim(pending.pk)  # it was running when its worker died; its lease lapsed
    tasks.ingest_dataset(pending.pk)
    pending.refresh_from_db()
    assert pending.status == JobStatus.SUCCEEDED and pending.version.row_count == 12


def test_the_ingest_page_polls_its_progress_and_opens_the_version_once_done(client, org, engineer, chat_set):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(20)))
    client.force_login(org["viewer"])
    html = client.get(ingest_url(pending)).content.decode()
    assert 'hx-trigger="every 1s"' in html and "waiting for a worker" in html and "<progress" in html
    fragment = client.get(ingest_url(pending), **HTMX)
    assert "HX-Refresh" not in fragment and 'id="ingest-progress"' in fragment.content.decode()

    tasks.ingest_dataset(pending.pk)
    fragment = client.get(ingest_url(pending), **HTMX)
    assert fragment["HX-Refresh"] == "true" and "every 1s" not in fragment.content.decode()
    page = client.get(ingest_url(pending))
    assert page.status_code == 302 and page["Location"].endswith("/v1/")
    client.force_login(org["outsider"])
    assert client.get(ingest_url(pending)).status_code == 404


def test_the_dataset_page_lists_uploads_still_being_checked(client, org, engineer, chat_set):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(20)))
    client.force_login(org["viewer"])
    url = reverse("dataset-detail", kwargs={"team": chat_set.owner_team.slug, "name": chat_set.name})
    assert ingest_url(pending) in client.get(url).content.decode()
    tasks.ingest_dataset(pending.pk)
    assert ingest_url(pending) not in client.get(url).content.decode()


def test_the_api_shows_a_running_ingests_progress(client, org, engineer, chat_set):
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(20)))
    ingest.claim(pending.pk)
    client.force_login(org["viewer"])
    answer = client.get(f"/api/v1/datasets/{chat_set.pk}/ingests/{pending.pk}").json()
    assert answer["status"] == "running" and answer["version"] is None and answer["error"] is None
    client.force_login(org["outsider"])
    assert client.get(f"/api/v1/datasets/{chat_set.pk}/ingests/{pending.pk}").status_code == 404
