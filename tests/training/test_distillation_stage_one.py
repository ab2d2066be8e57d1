"""A distillation's teacher key lives only in its trainer's process: a trainer killed during stage one (a
cancel stops its process group; a failed attempt; a lost node) could not revoke it. The job's end revokes
it, and a new attempt revokes the one its killed predecessor left before it makes its own."""

from __future__ import annotations

import pytest
from django.utils import timezone

from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from serving.models import Endpoint
from training import distillation, finetune
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def distilling(make_job, team):
    teacher = Endpoint.objects.create(name="big-teacher", owner_team=team)
    job = make_job(teacher_endpoint=teacher)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now()
    )
    job.refresh_from_db()
    return job


def _left_key(job: FineTuneJob) -> ApiKey:
    """The key stage one made, as a killed trainer leaves it: active."""
    key, _secret = key_services.create_key(
        actor=distillation.SYSTEM,
        team=job.owner_team,
        name=f"distillation job #{job.pk}",  # the name stage one gives it
        scopes=["big-teacher"],
        service=True,
    )
    return key


@pytest.mark.parametrize("status", [JobStatus.CANCELLED, JobStatus.FAILED])
def test_a_distillation_ending_revokes_the_teacher_key_its_killed_trainer_left(distilling, team, status):
    key = _left_key(distilling)
    unrelated, _ = key_services.create_key(
        actor=distillation.SYSTEM, team=team, name="distillation job #999999", service=True
    )
    assert finetune.finish(distilling.pk, status, "stopped")
    key.refresh_from_db()
    unrelated.refresh_from_db()
    assert key.revoked_at is not None and unrelated.revoked_at is None


def test_a_new_attempt_revokes_its_predecessors_teacher_key_before_making_its_own(distilling, monkeypatch):
    left = _left_key(distilling)

    class Refusing:
        """The gateway, as the new attempt's first call meets it; the keys are what is checked."""

        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def post(self, *args, **kwargs):
            raise RuntimeError("stop here")

    monkeypatch.setattr(distillation.httpx, "Client", Refusing)
    with pytest.raises(RuntimeError, match="stop here"):
        distillation.ask_teacher(distilling, [{"messages": [{"role": "user", "content": "hi"}]}])
    left.refresh_from_db()
    assert left.revoked_at is not None
    keys = ApiKey.objects.filter(name=f"distillation job #{distilling.pk}")
    assert keys.count() == 2 and not keys.filter(revoked_at__isnull=True).exists()
