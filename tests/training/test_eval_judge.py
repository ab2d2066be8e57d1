"""A judge endpoint's score in an eval run: its replies read as 0-1 scores whatever their shape (unreadable
ones counted, never a failure), the mean in the run's scores, on its page and on the leaderboard; the
judge must be an endpoint the task's team may call, and the rubric is bounded. Each answer is kept per row
for the side-by-side. The same through the real gateway is in tests/training/test_eval_runs_gateway.py."""

from __future__ import annotations

import contextlib

import pytest
from django.urls import reverse

from portfolio.errors import Invalid, NotFound
from serving.models import Deployment, Endpoint, EndpointRoute
from tests.training.test_eval_runs import endpoint as endpoint  # noqa: F401 - the shared fixtures
from tests.training.test_eval_runs import start
from tests.training.test_eval_runs import task as task  # noqa: F401
from tests.training.test_eval_runs import version as version  # noqa: F401
from training.choices import JobStatus
from training.evals import gateway, judging, runs
from training.evals.leaderboard import leaderboard

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("4", 0.75),
        ("5", 1.0),
        ("1", 0.0),
        ("**3**", 0.5),
        ("Score: 4/5", 0.75),  # "/ 5" is the prompt's 1-5 scale, as "4" is
        ("8 out of 10", 0.8),
        ("0.8", 0.8),
        ("1.0", 0.0),  # the 1-5 scale's worst grade, as "1" is (it read as a 0-1 rubric's top)
        ("0", 0.0),
        ("4.5", 0.875),
        ("Rating: 3 stars. The answer names the right queue.", 0.5),
        ("<think>Maybe a 2, the reference says billing.</think>\n5", 1.0),
        ("On the 1-5 scale: 2", 0.25),
    ],
)
def test_a_judges_reply_is_read_as_a_score_from_0_to_1(reply, read):
    assert judging.score(reply) == pytest.approx(read)


@pytest.mark.parametrize(
    "reply", ["", "word word word", "7", "-3", "6/5", "ten", "<think>I think 4</think>", "1-5", None]
)
def test_a_reply_without_a_readable_score_is_none_not_an_error(reply):
    assert judging.score(reply) is None


def test_the_judges_prompt_carries_the_rubric_the_reference_and_the_answer_cut_short():
    sent = judging.messages(
        "Names the right queue.", [{"role": "user", "content": "Q?"}], "billing", "x" * 5000
    )
    assert "Names the right queue." in sent[0]["content"] and "1 (bad) to 5" in sent[0]["content"]
    assert "Q?" in sent[1]["content"] and "billing" in sent[1]["content"]
    assert sent[1]["content"].count("x") == judging.MAX_PROMPT_PART
    assert judging.DEFAULT_RUBRIC in judging.messages("", [], "a", "b")[0]["content"]


@pytest.fixture
def judge(team, base, cpu_pool) -> Endpoint:
    deployment = Deployment.objects.create(name="judge-dep", owner_team=team, version=base, pool=cpu_pool)
    made = Endpoint.objects.create(name="judge-ep", owner_team=team)
    EndpointRoute.objects.create(endpoint=made, deployment=deployment, weight=100)
    return made


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, str]]:
    """The stand-in gateway: the scored endpoint answers "Billing."; the judge answers "5" when the answer
    matches the reference, "2" for a billing ticket's neighbour, and babble for the rest. Records (endpoint,
    label of the key) per call."""
    seen: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def client_for(team, endpoint_name, label):
        yield label

    def ask(client, endpoint_name, messages, max_tokens):
        seen.append((endpoint_name, client))
        if endpoint_name == "judge-ep":
            asked = messages[-1]["content"]
            reference = asked.split("Reference answer:\n", 1)[1].split("\n", 1)[0]
            reply = "5" if reference == "billing" else "2" if reference == "technical" else "I cannot say."
            return gateway.Answer(text=reply, latency_s=0.2, input_tokens=50, output_tokens=1)
        return gateway.Answer(text="Billing.", latency_s=0.05, input_tokens=10, output_tokens=2)

    monkeypatch.setattr(gateway, "client_for", client_for)
    monkeypatch.setattr(gateway, "ask", ask)
    return seen


def test_a_judged_run_has_the_mean_judge_score_and_counts_unreadable_replies(
    engineer, task, endpoint, judge, calls
):
    run = start(engineer, task, endpoint, row_limit=8, judge=judge, rubric="Routes to the right queue.")
    runs.execute(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.status_detail
    rows = run.answers
    assert len(rows) == 8 and all(row["answer"] == "Billing." for row in rows)
    expected = [row["expected"] for row in rows]
    assert [row["correct"] for row in rows] == [e == "billing" for e in expected]
    # The judge: 5 (1.0) for billing rows, 2 (0.25) for technical ones, babble (unreadable) for the rest.
    read = {"billing": 1.0, "technical": 0.25}
    assert [row["judge"] for row in rows] == [read.get(e) for e in expected]
    scored = [read[e] for e in expected if e in read]
    assert run.metrics["judge_score"] == pytest.approx(sum(scored) / len(scored))
    assert (run.metrics["judge_scored"], run.metrics["judge_unreadable"]) == (len(scored), 8 - len(scored))
    assert 0 < len(scored) < 8
    assert run.metrics["latency_p50_ms"] == pytest.approx(50)  # the judge's time is not the endpoint's
    assert {label for name, label in calls if name == "judge-ep"} == {f"eval run #{run.pk} (judge)"}
    assert len([name for name, _ in calls if name == "judge-ep"]) == 8 and run.rows_done == 8
    assert run.snapshot()["judge"] == "judge-ep"
    entry = leaderboard(task.eval_sets.get())[0]
    assert entry.judge_score == run.metrics["judge_score"]
    assert entry.cells["judge"] == f"{run.metrics['judge_score']:.2f}"


def test_a_run_without_a_judge_keeps_its_answers_and_has_no_judge_score(engineer, task, endpoint, calls):
    run = start(engineer, task, endpoint, row_limit=3)
    runs.execute(run.pk)
    run.refresh_from_db()
    assert "judge_score" not in run.metrics and len(run.answers) == 3
    assert all(name == "router-ep" for name, _ in calls)


def test_the_judge_must_be_callable_by_the_team_and_the_rubric_is_bounded(
    engineer, task, endpoint, judge, other_team
):
    outside = Endpoint.objects.create(name="their-judge", owner_team=other_team)
    with pytest.raises(NotFound, match="Judge endpoint not found"):
        start(engineer, task, endpoint, judge=outside)
    with pytest.raises(Invalid, match="rubric: at most 2000"):
        start(engineer, task, endpoint, judge=judge, rubric="x" * 2001)
    with pytest.raises(Invalid, match="needs a judge"):
        start(engineer, task, endpoint, rubric="Be right.")


def test_the_page_and_the_api_start_a_judged_run_and_show_its_score(
    client, org, task, endpoint, judge, calls
):
    client.force_login(org["engineer"])
    form = {
        "endpoint": endpoint.pk,
        "eval_set": task.eval_sets.get().pk,
        "row_limit": 24,  # the whole set: a sample of 4 (by the set's id) could hold no row the judge can score
        "concurrency": 2,
        "max_tokens": 8,
        "judge": judge.pk,
        "rubric": "Routes to the right queue.",
    }
    assert "Judge endpoint (optional)" in client.get(reverse("task-detail", args=[task.pk])).content.decode()
    response = client.post(reverse("task-run-start", args=[task.pk]), form)
    assert response.status_code == 302
    run = runs.EndpointEvalRun.objects.get()
    assert (run.judge_endpoint_name, run.rubric) == ("judge-ep", "Routes to the right queue.")
    runs.execute(run.pk)
    page = client.get(reverse("eval-run-detail", args=[run.pk])).content.decode()
    run.refresh_from_db()
    unreadable = run.metrics["judge_unreadable"]
    assert "Judge score (0-1, by judge-ep)" in page and f"{run.metrics['judge_score']:.2f}" in page
    if unreadable:
        assert f"{unreadable} repl{'y' if unreadable == 1 else 'ies'} without a readable score" in page
    board = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert ">Judge</th>" in board and f">{run.metrics['judge_score']:.2f}</td>" in board

    url = f"/api/v1/tasks/{task.pk}/eval-runs"
    body = {"endpoint_id": endpoint.pk, "eval_set_id": task.eval_sets.get().pk, "judge_endpoint_id": judge.pk}
    made = client.post(url, {**body, "rubric": "Be right."}, content_type="application/json")
    assert made.status_code == 202 and made.json()["judge_endpoint"] == "judge-ep"
    too_long = client.post(url, {**body, "rubric": "x" * 2001}, content_type="application/json")
    assert too_long.status_code == 422
    missing = client.post(url, {**body, "judge_endpoint_id": 10**9}, content_type="application/json")
    assert missing.status_code == 404
