"""A distillation's attempt killed while asking the teacher (out of memory, a reboot) is requeued, and its
answers, held only in its trainer's memory until all are asked, are lost with it. The next attempt does not
ask every prompt again on its own, each call billed again: the job fails, saying so. An attempt killed before
asking anything left no mark (the teacher key stage one makes before its first call), and its next one asks."""

from __future__ import annotations

import functools
import json
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from serving.gateway import services as key_services
from serving.gateway.models import ApiKey, UsageEvent
from serving.models import Endpoint
from training import distillation, lora, runner
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_attempt(make_job, team) -> FineTuneJob:
    """A distillation requeued after its first attempt was killed, now run by its second."""
    teacher = Endpoint.objects.create(name="big-teacher", owner_team=team)
    return make_job(
        teacher_endpoint=teacher, status=JobStatus.RUNNING, attempt=2, heartbeat_at=timezone.now()
    )


def _teacher(monkeypatch, answer) -> list[dict]:
    """The gateway the teacher's calls reach, answering ``answer(body)``: the bodies it was sent."""
    from training.evals.gateway import KeyedClient

    sent: list[dict] = []

    def handle(request):
        sent.append(json.loads(request.content))
        return answer(sent[-1])

    transport = httpx.MockTransport(handle)
    monkeypatch.setattr(distillation, "KeyedClient", functools.partial(KeyedClient, transport=transport))
    return sent


def _answered(body) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"message": {"content": "billing"}, "finish_reason": "stop"}]}
    )


def _killed_while_asking(job: FineTuneJob, calls: int) -> ApiKey:
    """What the first attempt left: its key, active, and the usage of the calls it made (and one refused)."""
    key, _secret = key_services.create_key(
        actor=distillation.SYSTEM,
        team=job.owner_team,
        name=distillation.teacher_key_name(job.pk),
        scopes=["big-teacher"],
        service=True,
    )
    for i in range(calls + 1):
        UsageEvent.objects.create(
            event_id=f"teacher-{job.pk}-{i}",
            at=timezone.now(),
            api_key=key,
            team_id=job.owner_team_id,
            endpoint="big-teacher",
            kind="chat",
            status=200 if i < calls else 429,
            cost=Decimal("0.001") if i < calls else 0,
        )
    return key


def test_an_attempt_after_one_killed_while_asking_fails_without_asking_again(second_attempt, monkeypatch):
    key = _killed_while_asking(second_attempt, calls=3)
    sent = _teacher(monkeypatch, _answered)
    monkeypatch.setattr(lora, "train", lambda **kwargs: pytest.fail("stage two started"))
    assert runner.run(second_attempt.pk) == 2
    second_attempt.refresh_from_db()
    assert sent == []
    assert second_attempt.status == JobStatus.FAILED
    assert second_attempt.status_detail.startswith(
        "The teacher's answers of the interrupted attempt were lost; 3 calls were billed"
    )
    assert "start the distillation again to ask again" in second_attempt.status_detail
    assert second_attempt.distilled_dataset_version is None
    key.refresh_from_db()
    assert key.revoked_at is not None  # the job's end revokes what the killed trainer could not


def test_an_attempt_after_one_killed_before_asking_asks_the_teacher(second_attempt, monkeypatch):
    def answer(body):
        # Stopped at the first answer: that it asked is what is checked.
        FineTuneJob.objects.filter(pk=second_attempt.pk).update(cancel_requested=True)
        return _answered(body)

    sent = _teacher(monkeypatch, answer)
    monkeypatch.setattr(lora, "train", lambda **kwargs: pytest.fail("stage two started"))
    assert runner.run(second_attempt.pk) == 3
    second_attempt.refresh_from_db()
    assert len(sent) == 1
    assert second_attempt.status == JobStatus.CANCELLED
