"""What a rollout does when the world changed under it: a canary whose replicas stopped is not promoted
(it would take every call nowhere), a rollback or an abort keeps the route edits made since the canary
started and never leaves the endpoint without a route with traffic, and a judge that can no longer be
called does not hold the canary for ever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings

from portfolio.errors import Invalid
from serving import rollout_judge, rollouts, services
from serving.choices import DesiredState, ReplicaState, RolloutState
from serving.models import Replica, Rollout
from tests.conftest import actor_for
from tests.serving.test_rollout_judge import JUDGED
from tests.serving.test_rollout_judge import judge as judge  # noqa: PLC0414 - the fixture, used by name
from tests.serving.test_rollouts import served, start, weights
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db


def test_a_canary_whose_replicas_stopped_is_rolled_back_not_promoted(client, org, world):
    """Healthy over its requests, then its replicas failed: the gateway routes to none of them, so it logs no
    error, and the step used to promote it to all the traffic, every call then refused with a 503."""
    start(client, org, min_requests=10)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 200)
    served(rollout, "support-next", 30)
    Replica.objects.filter(deployment__name="support-next").update(state=ReplicaState.FAILED)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "hold", (
        "it may be back"
    )
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "rollback"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK and "no replica ready" in rollout.reason
    assert weights(world) == {"support-bot": 100, "support-next": 0}


def test_a_canary_whose_replicas_are_being_stopped_is_rolled_back_not_promoted(client, org, world):
    """Scaled to none at the window's end: its replicas still ready while their agent drains them, but out of
    the gateway's table already; promoted, every call was then refused with a 503."""
    start(client, org, min_requests=10)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 200)
    served(rollout, "support-next", 30)
    Replica.objects.filter(deployment__name="support-next").update(desired=DesiredState.STOPPED)
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "rollback"
    assert weights(world) == {"support-bot": 100, "support-next": 0}


def test_an_abort_after_the_canary_was_made_the_only_route_keeps_its_traffic(client, org, world):
    """An operator promoted the canary by hand (the baseline's route removed), then aborted: the canary's
    weight used to go back to 0, leaving every route at 0 and every call refused."""
    start(client, org)
    services.set_routes(
        actor=actor_for(org["engineer"]),
        endpoint=world,
        routes=[{"deployment": "support-next", "weight": 100}],
    )
    response = client.post("/api/v1/endpoints/support/rollouts/abort", {}, content_type="application/json")
    assert response.status_code == 200 and response.json()["state"] == "aborted"
    assert weights(world) == {"support-next": 100}
    assert "keeps its weight" in Rollout.objects.get().reason


def test_a_route_edited_since_the_canary_started_keeps_the_edit(client, org, world):
    """The operator drained the baseline to 7 and took the canary out in one edit: the abort that follows
    used to put the baseline back to 100, undoing the edit."""
    start(client, org)
    services.set_routes(
        actor=actor_for(org["engineer"]), endpoint=world, routes=[{"deployment": "support-bot", "weight": 7}]
    )
    assert rollouts.step(Rollout.objects.get().pk) == "abort"
    assert weights(world) == {"support-bot": 7}


def test_a_rollback_restores_the_routes_the_canary_scaled(client, org, world):
    start(client, org, canary_percent=20, min_requests=10)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 12, status=502)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "rollback"
    assert weights(world) == {"support-bot": 100, "support-next": 0}


def test_a_judge_that_can_no_longer_be_called_does_not_hold_the_canary_for_ever(
    client, org, world, judge, monkeypatch
):
    """The judge endpoint unshared since the rollout started: training's sampler raises Invalid (no key can
    be made for it), which the step let through at every check; the rollout stayed a canary past its window
    and a failing canary was never rolled back."""
    judge()
    start(client, org, **JUDGED)

    def unshared(rollout, count):
        raise Invalid("scopes: the team has no endpoint 'grader', nor one shared with it")

    monkeypatch.setattr(rollout_judge, "SAMPLERS", [rollout_judge.JudgeSampler(lambda e: None, unshared)])
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    # Healthy calls: only the judge can fail it (a canary failing its calls is rolled back before any
    # judging, test_rollout_judge).
    served(rollout, "support-next", 40)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "hold"
    rollout.refresh_from_db()
    assert "nor one shared with it" in rollout.figures["judge_trouble"]
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "rollback"


def test_a_judge_needing_more_samples_than_the_window_can_judge_is_refused(client, org, judge):
    judge()
    response = start(client, org, **JUDGED | {"min_judge_samples": 33}, window_seconds=60)
    assert response.status_code == 400, response.content
    assert "has at most 32 canary answers judged" in response.json()["error"]["message"]
    assert not Rollout.objects.exists()
    assert start(client, org, **JUDGED | {"min_judge_samples": 32}, window_seconds=60).status_code == 201


def test_the_judges_pace_is_the_beat_schedules():
    assert settings.CELERY_BEAT_SCHEDULE["serving-step-rollouts"]["schedule"] == rollout_judge.CHECK_SECONDS
