"""Stage one of a distillation rides out a passing failure of the gateway or the teacher: a prompt whose call
meets a connection dropped, 502, 503 or 429 is asked again (a few times, after a short wait, as long as the
answer's Retry-After asks, capped), and the stage goes on with the answers already billed. A refusal that
another try would not change (400, 401, 403, 404) still fails the stage at once, and a cancel asked during
a wait stops it at once.

A real HTTP server on 127.0.0.1 stands in for the gateway."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest
from django.utils import timezone

from serving.gateway.models import ApiKey
from serving.models import Endpoint
from tests.training.stand_in_gateway import stand_in_gateway as stand_in_gateway  # noqa: F401 - the fixture
from training import distillation, gateway_retries, lora, runner
from training.choices import JobStatus
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db

ANSWER = {"choices": [{"message": {"content": "billing"}, "finish_reason": "stop"}]}


@pytest.fixture
def gateway(stand_in_gateway):
    """A stand-in gateway answering ``first(count)`` to each prompt's first call, ``then(count)`` to the next."""

    def start(first, then=lambda count: (200, {}, ANSWER)):
        return stand_in_gateway(lambda prompt, count: (first if count == 1 else then)(count))

    return start


@pytest.fixture
def distilling(make_job, team) -> FineTuneJob:
    teacher = Endpoint.objects.create(name="big-teacher", owner_team=team)
    return make_job(
        teacher_endpoint=teacher, status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now()
    )


PROMPTS = [{"prompt": f"ticket {i}", "completion": "?"} for i in range(3)]
PASSING = {
    "503 with Retry-After": lambda count: (503, {"Retry-After": "0"}, {"error": "restarting"}),
    "429 with a Retry-After date": lambda count: (429, {"Retry-After": formatdate(usegmt=True)}, {}),
    "502 without Retry-After": lambda count: (502, {}, {"error": "bad gateway"}),
    "connection dropped": lambda count: None,
}


@pytest.mark.parametrize("failure", PASSING, ids=list(PASSING))
def test_a_prompt_whose_call_meets_a_passing_failure_is_asked_again(
    distilling, gateway, monkeypatch, failure
):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.2)
    server = gateway(PASSING[failure])
    progress = []
    answered = distillation.ask_teacher(distilling, PROMPTS, on_progress=lambda *p: progress.append(p))
    assert len(answered) == 3 and all(a["messages"][-1]["content"] == "billing" for a in answered)
    assert dict(server.calls) == {"ticket 0": 2, "ticket 1": 2, "ticket 2": 2}
    # Each prompt's wait reported the count so far (the runner's heartbeat and cancel check), then its answer.
    assert list(dict.fromkeys(progress)) == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_a_teacher_still_failing_after_the_last_try_fails_the_stage_saying_so(
    distilling, gateway, monkeypatch
):
    monkeypatch.setattr(gateway_retries, "BACKOFF_S", 0.05)
    failing = lambda count: (503, {}, {"error": "down"})  # noqa: E731
    server = gateway(failing, failing)
    with pytest.raises(ValueError, match=rf"big-teacher answered 503 \({gateway_retries.TRIES} tries\)"):
        distillation.ask_teacher(distilling, PROMPTS)
    assert dict(server.calls) == {"ticket 0": gateway_retries.TRIES}
    assert not ApiKey.objects.filter(
        name=distillation.teacher_key_name(distilling.pk), revoked_at__isnull=True
    ).exists()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_refusal_another_try_would_not_change_fails_the_stage_at_once(distilling, gateway, status):
    server = gateway(lambda count: (status, {"Retry-After": "0"}, {"error": "refused"}))
    with pytest.raises(ValueError, match=f"big-teacher answered {status}: "):
        distillation.ask_teacher(distilling, PROMPTS)
    assert dict(server.calls) == {"ticket 0": 1}


def test_a_cancel_asked_while_a_call_waits_to_be_tried_again_stops_the_stage_at_once(
    distilling, gateway, monkeypatch
):
    """The job is run by its trainer as on a node; the cancel is asked while the first call is on its way,
    and the teacher asks for a long wait: the trainer stops without waiting it out, and asks nothing more."""
    monkeypatch.setattr(lora, "train", lambda **kwargs: pytest.fail("stage two started"))
    server = gateway(lambda count: (503, {"Retry-After": "25"}, {"error": "overloaded"}))
    FineTuneJob.objects.filter(pk=distilling.pk).update(cancel_requested=True)
    started = time.monotonic()
    assert runner.run(distilling.pk) == 3
    assert time.monotonic() - started < 10
    distilling.refresh_from_db()
    assert (distilling.status, distilling.status_detail) == (
        JobStatus.CANCELLED,
        "Cancelled while asking the teacher.",
    )
    assert sum(server.calls.values()) == 1


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "3600"}, "the cap"),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "soon"}, "the backoff"),
        ({}, "the backoff"),
    ],
)
def test_the_wait_before_another_try_follows_retry_after_capped(headers, expected):
    named = {"the cap": gateway_retries.WAIT_CAP_S, "the backoff": gateway_retries.BACKOFF_S}
    assert gateway_retries.retry_delay(httpx.Response(503, headers=headers), 1) == named.get(
        expected, expected
    )
