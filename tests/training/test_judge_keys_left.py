"""A rollout's judge is called with a service key of the endpoint's team (``rollout #N (judge)``), revoked
when the check's judging ends; a worker killed mid-judging could not, and its key stayed active for a day.
It is revoked at the rollout's next check, or, when the rollout ended meanwhile (by hand), at the next
beat tick, as eval runs and distillations revoke the keys a dead worker left."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.accounts.actor import Actor
from serving import rollouts, services
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from serving.models import Rollout
from tests.conftest import actor_for
from tests.serving.test_rollout_judge import JUDGED
from tests.serving.test_rollout_judge import judge as judge  # noqa: PLC0414 - the fixture, used by name
from tests.serving.test_rollouts import served, start
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db


def left_by_a_killed_worker(rollout: Rollout, name: str = "") -> ApiKey:
    """The judge key as the sampler mints it, never revoked: its worker was killed mid-judging."""
    key, _ = key_services.create_key(
        actor=Actor.for_system("training.evals"),
        team=rollout.endpoint.owner_team,
        name=name or f"rollout #{rollout.pk} (judge)",
        scopes=["grader"],
        service=True,
        expires_at=timezone.now() + key_services.SERVICE_KEY_LIFETIME,
    )
    return key


def test_the_next_check_revokes_the_judge_key_a_killed_worker_left(client, org, world, judge):
    recording = judge(scores=[0.9] * 4)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    left = left_by_a_killed_worker(rollout)
    other = left_by_a_killed_worker(rollout, name="support's own key")
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 12)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "hold"
    assert recording.asked == [2], "judged as ever"
    left.refresh_from_db()
    other.refresh_from_db()
    assert left.revoked_at is not None and other.revoked_at is None


def test_the_judge_key_left_of_a_rollout_ended_by_hand_is_revoked_at_the_next_tick(client, org, world, judge):
    judge()
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    left = left_by_a_killed_worker(rollout)
    services.abort_rollout(actor=actor_for(org["engineer"]), endpoint=rollout.endpoint)
    assert rollouts.step_all() == {}
    left.refresh_from_db()
    assert left.revoked_at is not None
