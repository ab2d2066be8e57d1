"""A job is sent to its node's queue by the task's name (training.tasks builds on finetune, not the reverse)."""

from __future__ import annotations

import pytest
from celery.app.task import Task

from portfolio.errors import Conflict
from training import finetune

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []

    def record(task, args=None, kwargs=None, **options):
        calls.append((task.name, args, options.get("queue")))

    monkeypatch.setattr(Task, "apply_async", record)
    return calls


def test_a_job_is_sent_as_training_run_job_to_the_queue_of_its_node(make_job, sent):
    job = make_job()
    finetune.enqueue(job)
    assert sent == [("training.run_job", (job.pk,), "node.node-a")]


def test_a_job_without_a_node_is_not_sent(make_job, sent):
    job = make_job(node=None)
    with pytest.raises(Conflict, match="has no node to run on"):
        finetune.enqueue(job)
    assert sent == []
