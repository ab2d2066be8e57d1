"""How an ingest ends is audited: a refusal, a bug, a give-up (its worker dying each time, or a day gone) as
``dataset.ingest_failed`` by the system, in the transaction that ends it; an upload whose rows an existing
version holds as ``dataset.ingest_reused``."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from tests.training.conftest import chat, jsonl, tickets, upload
from training import ingest, services, tasks
from training.choices import JobStatus
from training.models import DatasetIngest

pytestmark = pytest.mark.django_db


def queue_upload(actor, dataset, content: bytes) -> DatasetIngest:
    return services.upload_version(
        actor=actor, dataset=dataset, chunks=[content], filename="rows.jsonl", enqueue=False
    )


def ended(pending: DatasetIngest) -> AuditEvent:
    return AuditEvent.objects.get(action="dataset.ingest_failed", object_id=str(pending.pk))


def test_a_refused_file_audits_its_ingest_failed_by_the_system_without_its_rows(engineer, chat_set, team):
    pending = queue_upload(engineer, chat_set, jsonl(chat("a secret ticket", "billing"), "{oops secret"))
    tasks.ingest_dataset(pending.pk)
    event = ended(pending)
    assert (event.actor_kind, event.actor_label) == ("system", ingest.SYSTEM.label)
    assert event.object_type == "training.datasetingest" and event.team_id == team.pk
    assert event.after["status"] == JobStatus.FAILED and event.after["reason"].startswith("file: 1 problem")
    assert "secret" not in json.dumps(event.after)


def test_a_bug_during_the_ingest_audits_it_errored(engineer, chat_set, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full at /secret/path")

    monkeypatch.setattr(ingest, "store_directory", broken)
    pending = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    with pytest.raises(OSError):
        tasks.ingest_dataset(pending.pk)
    event = ended(pending)
    assert event.after["status"] == JobStatus.ERRORED and "OSError" in event.after["reason"]
    assert "secret" not in json.dumps(event.after)


def test_an_ingest_whose_worker_died_at_each_start_is_audited_as_given_up(engineer, chat_set):
    dying = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    for _ in range(ingest.MAX_RESENDS + 1):
        assert ingest.claim(dying.pk)
    assert not ingest.claim(dying.pk)  # the start past MAX_RESENDS gives it up
    event = ended(dying)
    assert event.after["status"] == JobStatus.ERRORED and "started 4 times" in event.after["reason"]


def test_an_ingest_unfinished_after_a_day_is_audited_as_given_up(engineer, chat_set):
    stuck = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    DatasetIngest.objects.filter(pk=stuck.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert ingest.reap_stale()[1] == [stuck.pk]
    assert "did not finish within 24 h" in ended(stuck).after["reason"]


def test_a_give_up_whose_audit_row_cannot_be_written_leaves_the_ingest_unfinished(
    engineer, chat_set, monkeypatch
):
    """The end and its audit row are one transaction: neither without the other."""
    stuck = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    DatasetIngest.objects.filter(pk=stuck.pk).update(created_at=timezone.now() - timedelta(hours=25))

    def refused(*args, **kwargs):
        raise RuntimeError("the audit trail is unavailable")

    monkeypatch.setattr(ingest.audit, "record", refused)
    with pytest.raises(RuntimeError):
        ingest.reap_stale()
    stuck.refresh_from_db()
    assert stuck.status == JobStatus.QUEUED and stuck.finished_at is None


def test_an_upload_of_rows_an_existing_version_holds_is_audited_as_reused(engineer, chat_set):
    version, _ = upload(engineer, chat_set, jsonl(*tickets(12)))
    again = queue_upload(engineer, chat_set, jsonl(*tickets(12)))
    tasks.ingest_dataset(again.pk)
    event = AuditEvent.objects.get(action="dataset.ingest_reused", object_id=str(again.pk))
    assert event.after == {"version": version.number} and event.actor_user_id == engineer.user.pk
    assert not AuditEvent.objects.filter(action="dataset.ingest_failed").exists()
