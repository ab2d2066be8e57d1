"""A check's judging is limited in time (rollout_judge.SAMPLING_SECONDS): a slow canary that breaches
nothing held its check, and the rollout's lease, for up to 16 canary calls of the upstream timeout (300 s)
each, then as many judge calls. The questions not asked in time are owed to the next checks. And a check
is dated after its sampling: the calls made while the judge was asked count at this check."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.utils import timezone

from serving import rollout_judge, rollouts
from serving.models import Rollout
from tests.serving.test_rollout_judge import judge as judge  # noqa: PLC0414 - the fixture, used by name
from tests.serving.test_rollout_judge_refusal import JUDGED, check
from tests.serving.test_rollout_judge_refusal import grader as grader  # noqa: PLC0414 - the fixture
from tests.serving.test_rollouts import served, start
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name
from training.evals import canary_judging, gateway

pytestmark = pytest.mark.django_db
SAMPLING = 1.2  # seconds a check may spend, here
CANARY_SECONDS = 0.5  # each slow canary answer


@pytest.fixture
def slow_canary(monkeypatch) -> list[float]:
    """A canary that takes CANARY_SECONDS an answer; the timeout each call was given."""
    monkeypatch.setattr(rollout_judge, "SAMPLING_SECONDS", SAMPLING)
    timeouts: list[float] = []

    def answer(rollout, question, pick, timeout):
        timeouts.append(timeout)
        time.sleep(CANARY_SECONDS)
        return "billing"

    monkeypatch.setattr(canary_judging, "canary_answer", answer)
    return timeouts


def test_a_slow_canary_is_asked_only_for_the_checks_time_and_the_rest_are_owed(
    client, org, world, grader, slow_canary
):
    judged = grader(refuse_call=0)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 8)  # 8 samples due
    began = time.monotonic()
    assert check(judged, rollout, 1) == "hold"
    took = time.monotonic() - began

    assert 1 <= len(slow_canary) <= 2, "at 0.5 s an answer, the canary's half of a 1.2 s check asks 2 at most"
    assert took < SAMPLING + CANARY_SECONDS + 1
    # Each call is given no more than what is left of the canary's half.
    assert slow_canary[0] <= SAMPLING / 2 and all(
        b < a for a, b in zip(slow_canary, slow_canary[1:], strict=False)
    )
    assert all(t <= settings.GATEWAY_UPSTREAM_TIMEOUT for t in slow_canary)
    rollout.refresh_from_db()
    asked = rollout.judged["asked"]
    assert 1 <= asked <= len(slow_canary)
    assert rollout.figures["judge_trouble"] == f"sampling stopped after {SAMPLING} s: {asked} of 8 judged"
    # The next check asks what is still owed (8 in all), not more.
    assert check(judged, rollout, 2) == "hold"
    rollout.refresh_from_db()
    assert asked < rollout.judged["asked"] <= 8


def test_a_check_is_dated_after_its_sampling(client, org, world, grader, monkeypatch):
    judged = grader(refuse_call=0)
    answered: list = []

    def answer(rollout, question, pick, timeout):
        answered.append(timezone.now())
        return "billing"

    monkeypatch.setattr(canary_judging, "canary_answer", answer)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 4)
    judged.checks.append([])
    rollouts.step(rollout.pk)  # no time given: the clock's
    rollout.refresh_from_db()
    assert answered and rollout.checked_at >= answered[-1]


def test_a_slow_judge_is_asked_only_for_the_checks_time_each_call_given_what_is_left(
    client, org, world, grader, monkeypatch
):
    """The judge's calls were not limited: each had the client's timeout (the upstream's 300 s and more), up
    to four tries, so a hanging judge held the check for minutes after a fast canary."""
    monkeypatch.setattr(rollout_judge, "SAMPLING_SECONDS", SAMPLING)
    judged = grader(refuse_call=0)
    timeouts: list[float] = []
    real_ask = judged.ask

    def slow_ask(client_, endpoint_name, messages, max_tokens, **options):
        timeouts.append(options["timeout"])
        time.sleep(0.5)
        return real_ask(client_, endpoint_name, messages, max_tokens)

    monkeypatch.setattr(gateway, "ask", slow_ask)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 8)
    began = time.monotonic()
    assert check(judged, rollout, 1) == "hold"
    took = time.monotonic() - began

    assert 1 <= len(timeouts) <= 3 and took < SAMPLING + 0.5 + 1
    assert timeouts[0] <= SAMPLING and all(b < a for a, b in zip(timeouts, timeouts[1:], strict=False))
    rollout.refresh_from_db()
    assert rollout.judged["asked"] == len(timeouts)
    assert rollout.figures["judge_trouble"].startswith(f"sampling stopped after {SAMPLING} s")
