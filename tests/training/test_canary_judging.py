"""Training's judge sampler for rollouts, through the real gateway process to stand-in engines: questions
of the task's eval set are put to the canary on its replica, each answer is scored by the judge endpoint
through the gateway (metered to the endpoint's team under a key revoked after), and the judge's replies are
read as scores; an endpoint no task serves in production cannot be judged, and the stepping of a judged
rollout rolls it back on the judge's low scores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from serving import rollout_judge, rollouts
from serving import services as serving
from serving.choices import RolloutState
from serving.gateway.models import ApiKey, UsageEvent
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import flush_settled
from tests.training.conftest import jsonl, tickets, upload
from training import services
from training.choices import DatasetKind
from training.evals import canary_judging, catalogue, portfolio

pytestmark = pytest.mark.django_db(transaction=True)
gateway_process = gateway_fixtures.gateway_process
gateway_url = gateway_fixtures.gateway_url
stack = gateway_fixtures.stack


def test_the_canary_is_asked_eval_questions_and_the_judge_scores_its_answers(
    stack, gateway_url, settings, engineer, team
):
    settings.GATEWAY_INTERNAL_URL = gateway_url
    base, _ = stack["deployment"]("bot-dep")
    endpoint = stack["endpoint"]("support", base)
    canary, canary_engines = stack["deployment"]("next-dep", answer=lambda body, i: "billing")
    grader, grader_engines = stack["deployment"]("grader-dep", answer=lambda body, i: "2")
    stack["endpoint"]("grader", grader)
    gateway_fixtures.wait_for_model(gateway_url, stack["key"](), "grader")
    assert "no task of support's team has it as its production endpoint" in canary_judging.check(endpoint)
    dataset = services.create_dataset(actor=engineer, owner_team=team, name="tickets", kind=DatasetKind.CHAT)
    version, _ = upload(engineer, dataset, jsonl(*tickets(12)))
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
    portfolio.set_production_endpoint(actor=engineer, task=task, endpoint=endpoint)
    assert canary_judging.check(endpoint) is None

    rollout = serving.start_rollout(
        actor=engineer,
        endpoint=endpoint,
        deployment=canary.name,
        judge="grader",
        judge_rubric="Names the right queue.",
        judge_fraction=0.5,
        min_judge_score=0.5,
        min_judge_samples=3,
    )
    assert rollout_judge.SAMPLERS[0].sample is canary_judging.sample, "registered by TrainingConfig.ready"
    UsageEvent.objects.bulk_create(
        UsageEvent(
            event_id=f"c{i}",
            at=rollout.started_at,
            endpoint="support",
            deployment=canary.name,
            kind="chat",
            status=200,
            latency_ms=50,
        )
        for i in range(6)
    )
    assert rollouts.step(rollout.pk, now=timezone.now() + timedelta(seconds=1)) == "rollback"

    asked = [r["messages"][-1]["content"] for r in canary_engines[0].requests]
    prompts = {row["messages"][-2]["content"] for row in tickets(12)}
    assert len(asked) == 3 and set(asked) <= prompts, "half of 6 canary requests: 3 eval questions"
    assert {r["model"] for r in canary_engines[0].requests} == {"next-dep"}
    judged = grader_engines[0].requests
    assert len(judged) == 3 and all("Names the right queue." in r["messages"][0]["content"] for r in judged)
    assert all("Answer to grade:\nbilling" in r["messages"][-1]["content"] for r in judged)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK
    assert (
        rollout.reason
        == "Rolled back: judge score 0.25 over 3 sampled canary answers, under the 0.50 required."
    )
    key = ApiKey.objects.get(name=f"rollout #{rollout.pk} (judge)")
    assert key.team_id == team.pk and key.scopes == ["grader"] and key.revoked_at is not None
    flush_settled()
    assert UsageEvent.objects.filter(endpoint="grader", api_key=key).count() == 3


def test_a_canary_without_a_ready_replica_cannot_be_judged_this_time(stack, gateway_url):
    from serving.models import Rollout

    base, _ = stack["deployment"]("bot-dep")
    endpoint = stack["endpoint"]("support", base)
    rollout = Rollout(endpoint=endpoint, deployment="absent-dep", ends_at=timezone.now(), judged={})
    with pytest.raises(rollout_judge.JudgeUnavailable, match="absent-dep has no ready replica"):
        import random

        canary_judging.canary_answer(rollout, [{"role": "user", "content": "hi"}], random.Random(1), 5)


def test_a_judge_the_team_can_no_longer_call_is_unavailable_this_time(team, monkeypatch):
    """The judge unshared (or gone) since the rollout started: no key can be made for it. That used to raise
    Invalid out of the rollout's step at every check; it is the judge not answering, said as such."""
    from serving.models import Endpoint, Rollout

    rollout = Rollout(
        pk=1,
        endpoint=Endpoint(name="support", owner_team=team),
        judge_endpoint_name="grader",
        judge_rubric="Is the queue right?",
        judged={},
    )
    row = {
        "messages": [{"role": "user", "content": "Refund me"}, {"role": "assistant", "content": "billing"}]
    }
    monkeypatch.setattr(canary_judging, "eval_set_of", lambda endpoint: object())
    monkeypatch.setattr(canary_judging.runs, "rows_of", lambda eval_set, limit: [row])
    monkeypatch.setattr(canary_judging, "canary_answer", lambda rollout, question, pick, timeout: "billing")
    with pytest.raises(
        rollout_judge.JudgeUnavailable, match="the judge cannot be called: scopes: .* 'grader'"
    ):
        canary_judging.sample(rollout, 1)
