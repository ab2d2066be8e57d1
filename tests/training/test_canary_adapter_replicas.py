"""The rollout judge asks a canary adapter only on replicas that loaded it, as the gateway routes the canary's
calls (found by review: a ready replica that never loaded it answered 404, which threw away the whole check,
and a healthy canary could end its window short of judged samples and be rolled back)."""

from __future__ import annotations

import random

import httpx
import pytest

from serving import rollout_judge
from serving.choices import DesiredState
from serving.models import Deployment, Replica, Rollout
from tests.serving.conftest import hold_adapters
from tests.serving.test_rollout_canary_health import tone as tone  # noqa: PLC0414 - the fixture, used by name
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name
from tests.serving.views.conftest import add_replica
from training.evals import canary_judging

pytestmark = pytest.mark.django_db
QUESTION = [{"role": "user", "content": "My card was charged twice."}]


@pytest.fixture
def asked(monkeypatch) -> list[str]:
    """The engines asked; one without the adapter answers 404, as vLLM does."""
    urls: list[str] = []

    def post(url, **kwargs):
        urls.append(url)
        request = httpx.Request("POST", url)
        if ":8199/" in url:
            return httpx.Response(
                404, json={"error": "The model `support-tone` does not exist."}, request=request
            )
        return httpx.Response(200, json={"choices": [{"message": {"content": "billing"}}]}, request=request)

    monkeypatch.setattr(canary_judging.httpx, "post", post)
    return urls


def test_only_a_replica_that_loaded_the_canary_adapter_is_asked(world, tone, asked):
    bot = Deployment.objects.get(name="support-bot")
    hold_adapters(Replica.objects.filter(deployment=bot), "support-tone")
    add_replica(bot, Replica.objects.filter(deployment=bot).first().node, port=8199, loaded_adapters=[])
    rollout = Rollout(endpoint=world, deployment="support-bot", adapter="support-tone", judged={})

    answers = [canary_judging.canary_answer(rollout, QUESTION, random.Random(seed), 5) for seed in range(20)]

    assert answers == ["billing"] * 20
    assert not any(":8199/" in url for url in asked)


def test_a_canary_adapter_no_ready_replica_loaded_cannot_be_judged_this_time(world, tone, asked):
    Replica.objects.filter(deployment__name="support-bot").update(loaded_adapters=[])
    rollout = Rollout(endpoint=world, deployment="support-bot", adapter="support-tone", judged={})

    with pytest.raises(rollout_judge.JudgeUnavailable, match="no ready replica that loaded support-tone"):
        canary_judging.canary_answer(rollout, QUESTION, random.Random(1), 5)
    assert asked == []


def test_a_canary_replica_being_drained_is_not_asked(world, tone, asked):
    """A replica to stop takes no more gateway calls (it is being drained): the judge's questions would
    keep it busy past its drain, so another is asked, or none when it is the last."""
    bot = Deployment.objects.get(name="support-bot")
    hold_adapters(Replica.objects.filter(deployment=bot), "support-tone")
    draining = add_replica(bot, Replica.objects.filter(deployment=bot).first().node, port=8199,
                           desired=DesiredState.STOPPED)  # fmt: skip
    hold_adapters(Replica.objects.filter(pk=draining.pk), "support-tone")
    rollout = Rollout(endpoint=world, deployment="support-bot", adapter="support-tone", judged={})

    answers = [canary_judging.canary_answer(rollout, QUESTION, random.Random(seed), 5) for seed in range(20)]

    assert answers == ["billing"] * 20
    assert not any(":8199/" in url for url in asked)
    Replica.objects.filter(deployment=bot).update(desired=DesiredState.STOPPED)
    with pytest.raises(rollout_judge.JudgeUnavailable, match="no ready replica"):
        canary_judging.canary_answer(rollout, QUESTION, random.Random(1), 5)


def test_a_replica_holding_another_version_of_the_canary_adapter_is_not_asked(world, tone, asked):
    """Removed and added again with another version while a load of the first was under way, the name is
    still served with the old weights there until the agent reloads it: the gateway routes it no calls
    (routing.py), so the judge must not ask it either."""
    bot = Deployment.objects.get(name="support-bot")
    hold_adapters(Replica.objects.filter(deployment=bot), "support-tone")
    old = add_replica(bot, Replica.objects.filter(deployment=bot).first().node, port=8199)
    Replica.objects.filter(pk=old.pk).update(
        loaded_adapters=["support-tone"], adapter_versions={"support-tone": tone.version_id + 1000}
    )
    rollout = Rollout(endpoint=world, deployment="support-bot", adapter="support-tone", judged={})

    answers = [canary_judging.canary_answer(rollout, QUESTION, random.Random(seed), 5) for seed in range(20)]

    assert answers == ["billing"] * 20
    assert not any(":8199/" in url for url in asked)
