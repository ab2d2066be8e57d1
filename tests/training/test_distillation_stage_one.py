"""Stage one of a distillation: the teacher's calls and the key they use.

Its teacher key lives only in its trainer's process: a trainer killed during stage one (a cancel stops its
process group; a failed attempt; a lost node) could not revoke it. The job's end revokes it, and a new
attempt revokes the one its killed predecessor left before it makes its own. Each prompt is a billed call:
a prompt set is bounded when the job starts, and a row that asks nothing is not sent."""

from __future__ import annotations

import functools
import json
import time

import httpx
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


def _teacher(monkeypatch, answer) -> None:
    """The gateway the teacher's calls reach, answering with ``answer(request)``."""
    from training.evals.gateway import KeyedClient

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(distillation, "KeyedClient", functools.partial(KeyedClient, transport=transport))


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

    def refusing(request):
        raise RuntimeError("stop here")  # the gateway, as the new attempt's first call meets it

    _teacher(monkeypatch, refusing)
    with pytest.raises(RuntimeError, match="stop here"):
        distillation.ask_teacher(distilling, [{"prompt": "hi", "completion": "?"}])
    left.refresh_from_db()
    assert left.revoked_at is not None
    keys = ApiKey.objects.filter(name=f"distillation job #{distilling.pk}")
    assert keys.count() == 2 and not keys.filter(revoked_at__isnull=True).exists()


def test_a_prompt_set_past_the_bound_is_refused_before_any_call(
    client, org, team, base, dataset_version, cpu_pool, enqueued, monkeypatch
):
    Endpoint.objects.create(name="big-teacher", owner_team=team)
    monkeypatch.setattr(finetune, "MAX_DISTILLATION_PROMPTS", dataset_version.train_count)
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/training/jobs",
        {
            "base_version_id": base.pk,
            "dataset_version_id": dataset_version.pk,
            "pool": "cpu",
            "teacher_endpoint": "big-teacher",
        },
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert "a distillation asks the teacher at most" in response.json()["error"]["message"]
    assert not FineTuneJob.objects.exists() and enqueued == []


def test_a_row_that_asks_nothing_is_not_sent_to_the_teacher(distilling, monkeypatch):
    sent = []

    def teacher(request):
        sent.append(json.loads(request.content)["messages"])
        return httpx.Response(200, json={"choices": [{"message": {"content": "billing"}}]})

    _teacher(monkeypatch, teacher)
    rows = [
        {"messages": [{"role": "assistant", "content": "an answer alone"}]},
        {"prompt": "   ", "completion": "x"},
        {"messages": [{"role": "user", "content": "charged twice"}, {"role": "assistant", "content": "?"}]},
    ]
    answered = distillation.ask_teacher(distilling, rows)
    assert sent == [[{"role": "user", "content": "charged twice"}]]
    assert [row["messages"][-1]["content"] for row in answered] == ["billing"]


def test_a_service_key_in_use_past_its_renewal_time_is_renewed_before_the_call(distilling, team):
    """Work longer than the key's lifetime (a day) kept calling with a key that lapsed under it; a call an
    hour after the last renewal moves the expiry a lifetime ahead first, audited."""
    from datetime import timedelta

    from portfolio.audit.models import AuditEvent
    from training.evals.gateway import KeyedClient

    key = _left_key(distilling)
    soon = timezone.now() + timedelta(minutes=5)
    ApiKey.objects.filter(pk=key.pk).update(expires_at=soon)
    seen = []
    transport = httpx.MockTransport(lambda request: seen.append(request.url.path) or httpx.Response(200))
    with KeyedClient(base_url="http://gateway", transport=transport) as client:
        client.key_id, client.renewed_at = key.pk, time.monotonic()
        client.get("/v1/models")
        key.refresh_from_db()
        assert key.expires_at == soon, "renewed at most once an hour"
        client.renewed_at -= key_services.SERVICE_KEY_RENEW_AFTER.total_seconds()
        client.get("/v1/models")
    key.refresh_from_db()
    assert key.expires_at >= timezone.now() + key_services.SERVICE_KEY_LIFETIME - timedelta(minutes=1)
    assert seen == ["/v1/models", "/v1/models"]
    assert AuditEvent.objects.filter(action="apikey.update", object_id=str(key.pk)).count() == 1


@pytest.mark.django_db(transaction=True)
def test_threads_calling_when_the_renewal_is_due_renew_once(team):
    """An eval run calls from a pool of threads: when the renewal falls due, one of them renews."""
    import threading

    from portfolio.audit.models import AuditEvent
    from training.evals.gateway import KeyedClient

    key, _ = key_services.create_key(actor=distillation.SYSTEM, team=team, name="eval run #1", service=True)
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    ready = threading.Barrier(4)
    with KeyedClient(base_url="http://gateway", transport=transport) as client:
        renew_after = key_services.SERVICE_KEY_RENEW_AFTER.total_seconds()
        client.key_id, client.renewed_at = key.pk, time.monotonic() - renew_after  # due

        def call():
            ready.wait()
            client.get("/v1/models")

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert AuditEvent.objects.filter(action="apikey.update", object_id=str(key.pk)).count() == 1
