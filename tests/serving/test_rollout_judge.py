"""A rollout's judge: the canary's sampled answers are scored by a judge endpoint during the watch window
(serving/rollout_judge.py, with training's sampler behind the hook; a recording one here), a low mean rolls
back with the figures, each judged batch is a step of the timeline and audited, the settings are bounded,
and a judge in use cannot be deleted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Invalid
from serving import rollout_judge, rollouts, services
from serving.choices import RolloutState
from serving.models import Endpoint, Rollout
from tests.conftest import actor_for
from tests.interleave import Pause, interleave
from tests.serving.test_rollouts import served, start, weights
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db


class Recording:
    """A judge sampler that gives the scores it is told, and remembers what it was asked."""

    def __init__(self, scores=(), refuse: str | None = None, fail: str | None = None):
        self.scores, self.refuse, self.fail = list(scores), refuse, fail
        self.asked: list[int] = []

    def sampler(self) -> rollout_judge.JudgeSampler:
        return rollout_judge.JudgeSampler(check=lambda endpoint: self.refuse, sample=self.sample)

    def sample(self, rollout, count: int):
        self.asked.append(count)
        if self.fail:
            raise rollout_judge.JudgeUnavailable(self.fail)
        taken, self.scores = self.scores[:count], self.scores[count:]
        return taken


@pytest.fixture
def judge(world, org, monkeypatch):
    services.create_endpoint(
        actor=actor_for(org["admin"]),
        name="grader",
        team=world.owner_team,
        routes=[{"deployment": "support-bot"}],
    )

    def install(**kwargs) -> Recording:
        recording = Recording(**kwargs)
        monkeypatch.setattr(rollout_judge, "SAMPLERS", [recording.sampler()])
        return recording

    return install


JUDGED = {"judge": "grader", "judge_fraction": 0.1, "min_judge_score": 0.6, "min_judge_samples": 3}


def test_a_judged_rollout_keeps_its_judge_settings_audited(client, org, judge):
    judge()
    response = start(client, org, **JUDGED, judge_rubric="Is the queue right?")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["judge_endpoint_name"], body["judge_fraction"], body["min_judge_score"]) == (
        "grader",
        0.1,
        0.6,
    )
    event = AuditEvent.objects.get(action="rollout.start")
    assert (
        event.after["rollout"]["judge"] == "grader"
        and event.after["rollout"]["judge_rubric"] == "Is the queue right?"
    )
    assert "grader judges 10% of its answers" in Rollout.objects.get().steps[0]["reason"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"judge_fraction": 0.2}, 400, "the judge settings need a judge endpoint"),
        ({**JUDGED, "judge": "nobody"}, 400, "no plain endpoint 'nobody'"),
        ({**JUDGED, "judge": "support"}, 400, "no plain endpoint 'support'"),
        ({**JUDGED, "judge_fraction": 0}, 422, "judge_fraction"),
        ({**JUDGED, "judge_fraction": 1.5}, 422, "judge_fraction"),
        ({**JUDGED, "min_judge_score": 2}, 422, "min_judge_score"),
        ({**JUDGED, "min_judge_samples": 0}, 422, "min_judge_samples"),
        ({**JUDGED, "judge_rubric": "x" * 2001}, 422, "judge_rubric"),
    ],
)
def test_judge_settings_are_bounded_with_clear_refusals(client, org, judge, body, status, words):
    judge()
    response = start(client, org, **body)
    assert response.status_code == status and words in response.content.decode()
    assert not Rollout.objects.exists()


def test_a_canary_that_cannot_be_judged_is_refused_with_the_samplers_reason(client, org, judge):
    judge(refuse="no task has support as its production endpoint")
    response = start(client, org, **JUDGED)
    assert response.status_code == 400
    assert "support's canary cannot be judged: no task has support" in response.json()["error"]["message"]


def test_a_check_overlapping_another_of_the_same_rollout_judges_nothing(client, org, world, judge):
    """Two checks at once (a slow judge outlasting a beat tick) would each judge the answers due."""
    recording = judge(scores=[0.9] * 10)
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 12)  # 2 samples due
    later = rollout.started_at + timedelta(minutes=1)
    overlapping = []
    sample = recording.sample

    def slow_judge(checked, count):
        overlapping.append(rollouts.step(rollout.pk, now=later))  # the next tick, while this one judges
        return sample(checked, count)

    rollout_judge.SAMPLERS[:] = [rollout_judge.JudgeSampler(check=lambda endpoint: None, sample=slow_judge)]
    assert rollouts.step(rollout.pk, now=later) == "hold"
    assert overlapping == [None] and recording.asked == [2]
    rollout.refresh_from_db()
    assert rollout.judged["asked"] == 2


def test_a_low_judge_score_rolls_the_canary_back_with_the_figures_audited(client, org, world, judge):
    recording = judge(scores=[0.25, 0.5, 0.25, 1.0])
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 12)  # 10% of 12: 2 samples due
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "hold"
    assert recording.asked == [2]
    rollout.refresh_from_db()
    assert rollout.figures["judge"]["samples"] == 2 and "of 3 needed" in rollout.figures["reason"]
    served(rollout, "support-next", 10, tag="more")  # 22 requests: 3 due in all, 1 more
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=2)) == "rollback"
    assert recording.asked == [2, 1]
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK
    assert (
        rollout.reason
        == "Rolled back: judge score 0.33 over 3 sampled canary answers, under the 0.60 required."
    )
    assert weights(world) == {"support-bot": 100, "support-next": 0}
    assert [s["kind"] for s in rollout.steps] == ["start", "judge", "judge", "rollback"]
    judged = AuditEvent.objects.filter(action="rollout.judge").order_by("sequence")
    assert [e.after["judged"]["samples"] for e in judged] == [2, 3]
    assert "0.33" in AuditEvent.objects.get(action="rollout.rollback").after["rollout"]["reason"]


def test_a_canary_failing_its_calls_is_rolled_back_before_any_judging(client, org, world, judge):
    """Sampling came first: minutes of canary and judge calls (billed) while the failing canary kept its
    share of the traffic, and only then the rollback its errors called for."""
    recording = judge(scores=[1.0] * 10)
    start(client, org, **JUDGED, min_requests=10)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 40, status=500)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "rollback"
    assert recording.asked == []


def test_a_well_judged_canary_is_promoted_when_the_window_ends(client, org, world, judge):
    judge(scores=[1.0, 0.75, 0.5, 1.0])
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-bot", 100)
    served(rollout, "support-next", 30)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "hold"
    assert rollouts.step(rollout.pk, now=rollout.ends_at + timedelta(seconds=1)) == "promote"
    rollout.refresh_from_db()
    assert "Judge score 0.75 over 3 sampled answers" in rollout.reason
    assert weights(world) == {"support-bot": 0, "support-next": 100}


def test_a_judge_that_does_not_answer_holds_and_says_why(client, org, world, judge):
    judge(fail="the judge did not answer: grader answered 503")
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-next", 40)
    assert rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1)) == "hold"
    rollout.refresh_from_db()
    assert rollout.figures["judge_trouble"] == "the judge did not answer: grader answered 503"
    assert rollout.judged == {} and not AuditEvent.objects.filter(action="rollout.judge").exists()
    page = client.get("/endpoints/support/").content.decode()
    assert 'data-testid="rollout-judge"' in page and "grader answered 503" in page


def test_samples_keep_up_with_the_fraction_within_their_caps(world):
    rollout = Rollout(endpoint=world, judge_endpoint_name="grader", judge_fraction=0.1, judged={})
    assert [rollout_judge.due(rollout, n) for n in (0, 1, 10, 11, 1000)] == [0, 1, 1, 2, 16]
    rollout.judged = {"asked": 2}
    assert rollout_judge.due(rollout, 20) == 0 and rollout_judge.due(rollout, 21) == 1
    rollout.judged = {"asked": 199}
    assert rollout_judge.due(rollout, 10_000) == 1, "at most 200 per rollout"
    assert rollout_judge.due(Rollout(endpoint=world, judged={}), 1000) == 0, "no judge, no samples"


def test_the_endpoint_page_shows_the_judges_score_with_the_steps(client, org, world, judge):
    judge(scores=[0.5, 1.0])
    start(client, org, **JUDGED)
    rollout = Rollout.objects.get()
    served(rollout, "support-next", 20)
    rollouts.step(rollout.pk, now=rollout.started_at + timedelta(minutes=1))
    page = client.get("/endpoints/support/").content.decode()
    assert "mean <strong>0.75</strong> over 2 sampled canary answers" in page
    assert "grader judged 2 sampled canary answers; mean 0.75 over 2 so far." in page


def test_a_judge_in_use_cannot_be_deleted(client, org, world, judge):
    judge()
    start(client, org, **JUDGED)
    with pytest.raises(Conflict, match="grader judges the rollout under way on support"):
        services.delete_endpoint(
            actor=actor_for(org["admin"]), endpoint=world.__class__.objects.get(name="grader")
        )


def test_the_endpoint_pages_form_starts_a_judged_rollout(client, org, judge):
    judge()
    client.force_login(org["engineer"])
    assert "Judge a sample of the canary" in client.get("/endpoints/support/").content.decode()
    form = {
        "candidate": "support-next",
        "canary_percent": "10",
        "window_minutes": "15",
        "min_requests": "20",
        "max_error_points": "2",
        "max_latency_ratio": "1.5",
        "judge": "grader",
        "judge_percent": "25",
        "min_judge_score": "0.7",
        "min_judge_samples": "4",
        "judge_rubric": "Names the queue.",
    }
    assert client.post("/endpoints/support/rollouts/", form).status_code == 302
    rollout = Rollout.objects.get()
    assert (rollout.judge_endpoint_name, rollout.judge_fraction, rollout.min_judge_score) == (
        "grader",
        0.25,
        0.7,
    )
    assert (rollout.min_judge_samples, rollout.judge_rubric) == (4, "Names the queue.")
    page = client.get("/endpoints/support/").content.decode()
    assert "a mean judge score under 0.70 from grader over 4+ sampled answers (25% of the canary" in page


# --- A judge deleted while a rollout that names it starts ----------------------------------------------
def _judge_deleted_as_a_rollout_starts(org, world, judge, monkeypatch, *, rollout_first: bool):
    """The delete of the judge and a rollout naming it, the first paused at its audit write (its checks
    passed, its rows locked) while the other runs: (the rollout's outcome, the delete's), and the judge."""
    judge()
    grader = Endpoint.objects.get(name="grader")
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))

    def start():
        return services.start_rollout(
            actor=actor_for(org["engineer"]), endpoint=world, deployment="support-next", **JUDGED
        )

    def delete():
        return services.delete_endpoint(actor=actor_for(org["admin"]), endpoint=grader)

    if rollout_first:
        started, deleted = interleave(pause, start, delete)
    else:
        deleted, started = interleave(pause, delete, start)
    return started, deleted, grader


@pytest.mark.django_db(transaction=True)
def test_a_judge_deleted_while_a_rollout_naming_it_starts_is_not_found(org, world, judge, monkeypatch):
    """The delete has passed its checks (no canary under way names the judge) and holds the judge's row: the
    rollout waits for it, then finds the judge gone (a 400 naming it), instead of failing at commit."""
    started, deleted, _ = _judge_deleted_as_a_rollout_starts(
        org, world, judge, monkeypatch, rollout_first=False
    )

    assert deleted.error is None
    assert isinstance(started.error, Invalid) and "no plain endpoint 'grader'" in str(started.error), (
        started.error
    )
    assert not Rollout.objects.exists() and not Endpoint.objects.filter(name="grader").exists()
    assert weights(world) == {"support-bot": 100}


@pytest.mark.django_db(transaction=True)
def test_a_judge_is_not_deleted_while_a_rollout_naming_it_starts(org, world, judge, monkeypatch):
    """The rollout holds the judge's row until it commits: the delete then sees the canary it judges."""
    started, deleted, grader = _judge_deleted_as_a_rollout_starts(
        org, world, judge, monkeypatch, rollout_first=True
    )

    assert started.error is None
    assert isinstance(deleted.error, Conflict) and "grader judges the rollout under way" in str(deleted.error)
    assert Rollout.objects.get().judge_endpoint_id == grader.pk
