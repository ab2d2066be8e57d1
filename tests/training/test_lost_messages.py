"""A queued fine-tune whose message never reached its node (the broker down at the enqueue, a purged queue)
is sent again by the reaper's task, instead of waiting for ever on a live node with its GPUs held."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from serving.choices import NodeState
from training import tasks
from training.choices import JobStatus

pytestmark = pytest.mark.django_db


def _queued(make_job, *, age: timedelta, sent: timedelta | None = None):
    now = timezone.now()
    return make_job(
        status=JobStatus.QUEUED, created_at=now - age, heartbeat_at=now - sent if sent is not None else None
    )


def test_a_job_whose_message_was_lost_is_sent_again_by_the_reapers_task(make_job, enqueued):
    job = _queued(make_job, age=timedelta(hours=2))
    tasks.reap_stale_jobs()
    assert [sent.pk for sent in enqueued] == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and timezone.now() - job.heartbeat_at < timedelta(minutes=1)
    tasks.reap_stale_jobs()
    assert len(enqueued) == 1, "once per turn: the next copy waits for another quiet period"


def test_resends_back_off_as_the_job_waits(make_job, enqueued):
    """Its node's worker may only be busy: the longer it has waited, the longer between copies."""
    from training import lost_messages

    waiting = _queued(make_job, age=timedelta(hours=8), sent=timedelta(hours=1))
    assert lost_messages.resend() == []  # a quarter of 8 h has not passed since the last copy
    type(waiting).objects.filter(pk=waiting.pk).update(heartbeat_at=timezone.now() - timedelta(hours=3))
    assert lost_messages.resend() == [waiting.pk]


def test_jobs_just_queued_running_or_on_a_lost_node_are_not_sent_again(make_job, enqueued):
    from training import lost_messages

    _queued(make_job, age=timedelta(minutes=5))
    make_job(status=JobStatus.RUNNING, created_at=timezone.now() - timedelta(hours=1))
    on_lost = _queued(make_job, age=timedelta(hours=3))
    assert on_lost.node is not None
    assert lost_messages.resend() == [on_lost.pk]  # the one on a node still alive
    type(on_lost).objects.filter(pk=on_lost.pk).update(heartbeat_at=timezone.now() - timedelta(hours=3))
    type(on_lost.node).objects.filter(pk=on_lost.node.pk).update(state=NodeState.LOST)
    assert lost_messages.resend() == [], "a lost node's queued jobs are the reaper's to fail"
    assert len(enqueued) == 1
