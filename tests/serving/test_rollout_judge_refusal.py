"""A rollout's judge that refuses a sampled question (one too long for its context, say): the scores of the
calls before it (billed) are kept, and the next check draws other questions instead of asking (and billing)
the same ones to be refused again at every check of the window. A check that finds the endpoint's row
locked keeps its scores for the next check rather than buying them again."""

from __future__ import annotations

import contextlib
import re
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction

from portfolio.audit.models import AuditEvent
from serving import rollout_judge, rollouts
from serving.models import Endpoint, Rollout
from tests.serving.test_rollout_judge import judge as judge  # noqa: PLC0414 - the fixture, used by name
from tests.serving.test_rollouts import served, start
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name
from training.evals import canary_judging, gateway

pytestmark = pytest.mark.django_db
CANARY_ANSWER = canary_judging.canary_answer  # the real one, which the grader fixture stands in for
JUDGED = {"judge": "grader", "judge_fraction": 1.0, "min_judge_score": 0.6, "min_judge_samples": 3}
ROWS = [
    {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "billing"}]}
    for i in range(40)
]


class Grader:
    """The judge behind the gateway: refuses the questions in ``refused``, and the ``refuse_call``-th call
    (its question then refused for good, as a prompt too long for its context is); scores 4/5 otherwise."""

    def __init__(self, refuse_call: int):
        self.refuse_call, self.refused = refuse_call, set()
        self.checks: list[list[str]] = []  # each check's judge calls, by question

    def ask(self, client, endpoint_name, messages, max_tokens, **options):
        asked = re.search(r"user: (question \d+)\n", messages[-1]["content"]).group(1)
        self.checks[-1].append(asked)
        if len(self.checks) == 1 and len(self.checks[-1]) == self.refuse_call:
            self.refused.add(asked)
        if asked in self.refused:
            raise gateway.GatewayRefused("grader answered 400: the prompt is longer than its context")
        return gateway.Answer("Score: 4/5", 0.01, 100, 1)


@pytest.fixture
def grader(judge, monkeypatch):
    """training's sampler, with the eval set, the canary and the gateway stood in for."""
    judge()  # the grader endpoint
    monkeypatch.setattr(
        rollout_judge,
        "SAMPLERS",
        [rollout_judge.JudgeSampler(check=lambda e: None, sample=canary_judging.sample)],
    )
    monkeypatch.setattr(canary_judging, "eval_set_of", lambda endpoint: object())
    monkeypatch.setattr(canary_judging.runs, "rows_of", lambda eval_set, limit: ROWS)
    monkeypatch.setattr(canary_judging, "canary_answer", lambda rollout, question, pick, timeout: "billing")

    @contextlib.contextmanager
    def client_for(team, endpoint_name, label):
        yield None

    monkeypatch.setattr(gateway, "client_for", client_for)

    def install(refuse_call: int) -> Grader:
        made = Grader(refuse_call)
        monkeypatch.setattr(gateway, "ask", made.ask)
        return made

    return install


def check(grader_: Grader, rollout: Rollout, minutes: int) -> str | None:
    grader_.checks.append([])
    return rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=minutes))


def test_a_refused_question_keeps_the_scores_before_it_and_is_not_asked_again(client, org, world, grader):
    judged = grader(refuse_call=3)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 4)  # 4 samples due
    assert check(judged, rollout, 1) == "hold"
    first = judged.checks[0]
    assert len(first) == 3
    rollout.refresh_from_db()
    assert rollout.figures["judge_trouble"].startswith("the judge did not answer: grader answered 400")
    assert (rollout.judged["samples"], rollout.judged["asked"]) == (2, 2), "the two billed scores are kept"
    assert rollout.figures["judge"]["score"] == 0.75
    assert AuditEvent.objects.filter(action="rollout.judge").count() == 1
    assert check(judged, rollout, 2) == "hold"
    second = judged.checks[1]
    assert second[:3] != first, "the next check asks (and bills) the same questions again"
    rollout.refresh_from_db()
    assert rollout.judged["asked"] == 2 + sum(q not in judged.refused for q in second)
    assert rollout.judged["asked"] <= 4


def test_a_refusal_of_the_first_question_draws_others_next_time(client, org, world, grader):
    judged = grader(refuse_call=1)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 4)
    assert check(judged, rollout, 1) == "hold"
    rollout.refresh_from_db()
    # Nothing scored: nothing tallied, and the refused question is not counted (a judge down for a while
    # would spend the rollout's samples), but the next draw is another.
    assert rollout.judged == {"asked": 0, "redrawn": 1}
    assert not AuditEvent.objects.filter(action="rollout.judge").exists()
    assert check(judged, rollout, 2) == "hold"
    assert judged.checks[1][0] != judged.checks[0][0]
    rollout.refresh_from_db()
    assert rollout.judged["asked"] == sum(q not in judged.refused for q in judged.checks[1])


def test_a_question_the_canary_refuses_draws_others_next_time(client, org, world, grader, monkeypatch):
    """Longer than the canary's context, say: its engine answers 400, before the judge is asked anything.
    The same draw was made again at every check, and the rollout never judged, then rolled back."""
    import httpx

    from serving.models import Replica

    judged = grader(refuse_call=0)  # the judge refuses nothing
    monkeypatch.setattr(canary_judging, "canary_answer", CANARY_ANSWER)
    Replica.objects.filter(deployment__name="support-next").update(host="127.0.0.1", port=8001)
    asked: list[str] = []

    def engine(url, json, headers, timeout, **options):
        asked.append(json["messages"][-1]["content"])
        request = httpx.Request("POST", url)
        if len(asked) == 1:
            return httpx.Response(400, json={"error": "longer than the context"}, request=request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "billing"}}]}, request=request)

    monkeypatch.setattr(canary_judging.httpx, "post", engine)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 4)
    first = rollout_judge.seed(rollout)
    assert check(judged, rollout, 1) == "hold"
    rollout.refresh_from_db()
    assert rollout.judged == {"asked": 0, "redrawn": 1}
    assert "400 (the next check asks other questions)" in rollout.figures["judge_trouble"]
    assert rollout_judge.seed(rollout) != first, "the next check draws other questions"
    assert check(judged, rollout, 2) == "hold"
    rollout.refresh_from_db()
    assert rollout.judged["asked"] >= 1


@pytest.mark.django_db(transaction=True)
def test_scores_of_a_check_that_finds_the_endpoint_locked_are_kept_for_the_next(client, org, world, judge):
    recording = judge(scores=[1.0, 0.5, 0.25])
    start(client, org, **{**JUDGED, "judge_fraction": 0.1})
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 20)  # 2 samples due
    locked, release = threading.Event(), threading.Event()

    def edit_routes():  # a route edit holding the endpoint's row while the check judges
        try:
            with transaction.atomic():
                Endpoint.objects.select_for_update().get(pk=world.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    sample = recording.sample
    editor = threading.Thread(target=edit_routes)

    def judging_while_edited(checked, count):
        editor.start()
        assert locked.wait(10)
        return sample(checked, count)

    rollout_judge.SAMPLERS[:] = [
        rollout_judge.JudgeSampler(check=lambda e: None, sample=judging_while_edited)
    ]
    try:
        assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) is None
    finally:
        release.set()
        editor.join(10)
    rollout.refresh_from_db()
    assert rollout.judged == {"asked": 2, "pending": [1.0, 0.5]}, "kept, not bought again"
    rollout_judge.SAMPLERS[:] = [recording.sampler()]
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=2)) == "hold"
    assert recording.asked == [2], "nothing more due: the kept scores count"
    rollout.refresh_from_db()
    assert (rollout.judged["samples"], rollout.judged["asked"]) == (2, 2)
    assert rollout.figures["judge"]["score"] == 0.75
    assert "pending" not in rollout.judged
    assert [s["kind"] for s in rollout.steps] == ["start", "judge"]
