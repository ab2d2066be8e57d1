"""A teacher (or an eval run's endpoint) that stops answering: the gateway times it out after its upstream
timeout and bills the request its worst case (504). The call is never asked again, which would bill it
again and wait as long again; the job's client waits a little longer than the gateway, so the gateway's
504 comes first; and should the client time out first, the job ends failed saying so, not errored with a
traceback (a bug).

httpx's MockTransport stands in for the gateway where only ``post`` is tried; a real HTTP server on
127.0.0.1 where a job runs."""

from __future__ import annotations

import time

import httpx
import pytest
from django.utils import timezone

from serving.gateway.models import ApiKey
from serving.models import Endpoint
from tests.training.stand_in_gateway import stand_in_gateway as stand_in_gateway  # noqa: F401 - the fixture
from tests.training.test_eval_runs import endpoint as endpoint  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import start
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import version as version  # noqa: F401 - the shared fixture
from training import distillation, gateway_retries, lora, runner
from training.choices import JobStatus
from training.evals import runs
from training.models import FineTuneJob

TIMED_OUT = {"error": {"message": "The model did not answer in time.", "code": "upstream_timeout"}}
ANSWER = {
    "choices": [{"message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1},
}


def mock_gateway(answer) -> tuple[httpx.Client, list[httpx.Request]]:
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answer(request)

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://gateway"), calls


def test_a_client_timeout_fails_the_call_at_once_saying_so(monkeypatch):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.0)

    def silent(request):
        raise httpx.ReadTimeout("silence", request=request)

    client, calls = mock_gateway(silent)
    with pytest.raises(
        gateway_retries.CallFailed, match=r"^The teacher t did not answer in time \(ReadTimeout\)"
    ):
        gateway_retries.post(
            client, "/v1/chat/completions", {"model": "t"}, endpoint="t", who="The teacher t"
        )
    assert len(calls) == 1


def test_the_gateways_504_is_not_asked_again(monkeypatch):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.0)
    client, calls = mock_gateway(lambda request: httpx.Response(504, json=TIMED_OUT))
    with pytest.raises(gateway_retries.CallFailed, match="t answered 504: .*did not answer in time"):
        gateway_retries.post(client, "/v1/chat/completions", {"model": "t"}, endpoint="t")
    assert len(calls) == 1


@pytest.fixture
def distilling(make_job, team) -> FineTuneJob:
    teacher = Endpoint.objects.create(name="big-teacher", owner_team=team)
    return make_job(
        teacher_endpoint=teacher, status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now()
    )


def answering_after(seconds: float, answer):
    def reply(prompt: str, count: int):
        time.sleep(seconds)
        return answer

    return reply


PROMPTS = [{"prompt": f"ticket {i}", "completion": "?"} for i in range(3)]


@pytest.mark.django_db
def test_the_teacher_client_waits_for_the_gateways_504(distilling, stand_in_gateway, settings):
    """The gateway's clock starts after the client's: its 504 comes a moment after its upstream timeout."""
    settings.GATEWAY_UPSTREAM_TIMEOUT = 1
    server = stand_in_gateway(answering_after(1.5, (504, {}, TIMED_OUT)))
    with pytest.raises(
        gateway_retries.CallFailed, match="big-teacher answered 504: .*did not answer in time"
    ):
        distillation.ask_teacher(distilling, PROMPTS)
    assert dict(server.calls) == {"ticket 0": 1}


@pytest.mark.django_db
def test_a_distillation_whose_teacher_outlasts_the_client_fails_saying_so(
    distilling, stand_in_gateway, settings, monkeypatch
):
    """A composite teacher's hops may each take the gateway's whole timeout: the client times out first."""
    monkeypatch.setattr(lora, "train", lambda **kwargs: pytest.fail("stage two started"))
    monkeypatch.setattr(gateway_retries, "TIMEOUT_MARGIN_S", 0.0)
    settings.GATEWAY_UPSTREAM_TIMEOUT = 1
    server = stand_in_gateway(answering_after(2.5, None))  # nothing written to the client gone
    assert runner.run(distilling.pk) == 2
    distilling.refresh_from_db()
    assert distilling.status == JobStatus.FAILED, distilling.status_detail
    assert "The teacher big-teacher did not answer in time (ReadTimeout)" in distilling.status_detail
    assert "Traceback" not in distilling.status_detail
    assert sum(server.calls.values()) == 1
    assert not ApiKey.objects.filter(
        name=distillation.teacher_key_name(distilling.pk), revoked_at__isnull=True
    ).exists()


@pytest.mark.django_db
def test_an_eval_run_whose_endpoint_timed_out_fails_without_asking_again(
    engineer, task, endpoint, stand_in_gateway, monkeypatch
):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.0)
    server = stand_in_gateway(
        lambda ticket, count: (504, {}, TIMED_OUT) if "Ticket 5:" in ticket else (200, {}, ANSWER)
    )
    run = start(engineer, task, endpoint, row_limit=30, concurrency=1)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED
    assert "router-ep answered 504: " in run.status_detail and "did not answer in time" in run.status_detail
    assert max(server.calls.values()) == 1
