"""A queued eval run whose Celery message was lost (a broker restart, a purged queue) does not stay queued for
ever: the reaper sends it again once it has waited longer than the bound, and again each bound, and fails it,
with the reason, when no worker took it up for hours; a younger queued run, and a queued run a worker then
claims, are left alone. Found by review: it was failed as lost after an hour, while it waited behind two long
runs or merges of another team that held both long workers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from tests.training.test_eval_runs import endpoint as endpoint  # noqa: F401 - the shared fixtures
from tests.training.test_eval_runs import start
from tests.training.test_eval_runs import task as task  # noqa: F401
from tests.training.test_eval_runs import version as version  # noqa: F401
from training import tasks
from training.choices import JobStatus
from training.evals import runs
from training.evals.models import EndpointEvalRun

pytestmark = pytest.mark.django_db


def queued_since(run, ago: timedelta) -> None:
    EndpointEvalRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - ago)


def test_a_queued_run_no_worker_took_up_is_sent_again_each_hour(engineer, task, endpoint, monkeypatch):
    sent = []
    monkeypatch.setattr(runs, "enqueue_run", sent.append)
    waiting = start(engineer, task, endpoint)
    young = start(engineer, task, endpoint)
    queued_since(waiting, runs.QUEUED_AT_MOST + timedelta(minutes=1))
    assert tasks.reap_stale_eval_runs() == 0 and sent == [waiting.pk]
    assert tasks.reap_stale_eval_runs() == 0 and sent == [waiting.pk], "sent again only an hour later"
    EndpointEvalRun.objects.filter(pk=waiting.pk).update(heartbeat_at=timezone.now() - runs.QUEUED_AT_MOST)
    tasks.reap_stale_eval_runs()
    assert sent == [waiting.pk, waiting.pk]
    waiting.refresh_from_db()
    young.refresh_from_db()
    assert (waiting.status, young.status) == (JobStatus.QUEUED, JobStatus.QUEUED)
    assert not AuditEvent.objects.filter(action="eval.run_finish").exists()
    runs.execute(waiting.pk)  # a copy is taken up: the run is scored once, later copies find it claimed
    waiting.refresh_from_db()
    assert waiting.status != JobStatus.QUEUED and waiting.started_at is not None


def test_a_queued_run_no_worker_took_up_for_hours_is_failed(engineer, task, endpoint, monkeypatch):
    monkeypatch.setattr(runs, "enqueue_run", lambda run_id: None)
    lost = start(engineer, task, endpoint)
    queued_since(lost, runs.GIVE_UP_AFTER + timedelta(minutes=1))
    assert tasks.reap_stale_eval_runs() == 1
    lost.refresh_from_db()
    assert lost.status == JobStatus.FAILED and "took it up in 6 h" in lost.status_detail
    assert lost.finished_at is not None
    finished = AuditEvent.objects.get(action="eval.run_finish", object_id=str(lost.pk))
    assert finished.after["status"] == "failed"
    runs.execute(lost.pk)  # the lost message turns up after all: the failed run is not run
    lost.refresh_from_db()
    assert lost.status == JobStatus.FAILED and lost.started_at is None


def test_the_reaper_leaves_a_run_a_worker_claimed_meanwhile(engineer, task, endpoint):
    run = start(engineer, task, endpoint)
    EndpointEvalRun.objects.filter(pk=run.pk).update(
        status=JobStatus.RUNNING,
        heartbeat_at=timezone.now(),
        created_at=timezone.now() - runs.QUEUED_AT_MOST - timedelta(minutes=1),
    )
    assert runs.reap_stale(timedelta(minutes=10)) == []
    run.refresh_from_db()
    assert run.status == JobStatus.RUNNING
