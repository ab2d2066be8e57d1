"""Eval runs side by side: two to six finished runs of a task's eval set compared row by row from the answers
each run keeps, the rows answered differently first; on a page (paged, each answer marked right or wrong)
and in the API; a choice that cannot be compared is refused saying why; a run of another task, or one not visible, is not
found."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.errors import Invalid, NotFound
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixtures
from tests.training.test_eval_runs import version as version  # noqa: F401
from training.choices import JobStatus
from training.evals import catalogue, side_by_side
from training.evals.leaderboard import leaderboard
from training.evals.metrics import normalise
from training.evals.models import EndpointEvalRun

pytestmark = pytest.mark.django_db
EXPECTED = ["billing", "technical", "account", "shipping"]


def kept(task, endpoint_name: str, answers: list[str], *, eval_set=None, status=JobStatus.SUCCEEDED):
    """A finished run of ``endpoint_name`` that answered ``answers`` to the rows expecting EXPECTED."""
    return EndpointEvalRun.objects.create(
        owner_team=task.owner_team,
        eval_set=eval_set or task.eval_sets.get(),
        endpoint_name=endpoint_name,
        row_limit=10,
        status=status,
        metrics={"quality": 0.5},
        answers=[
            {"prompt": f"Ticket {i}", "expected": e, "answer": a, "correct": normalise(a) == e, "judge": None}
            for i, (e, a) in enumerate(zip(EXPECTED, answers, strict=False))
        ],
    )


def test_runs_are_compared_row_by_row_with_the_differing_rows_first(engineer, task):
    small = kept(task, "small", ["billing", "billing", "account", "shipping"])
    large = kept(task, "large", ["billing", "technical", "Account.", "billing", "extra"])
    done = side_by_side.compare(actor=engineer, task=task, run_ids=[str(small.pk), str(large.pk)])
    assert [run.pk for run in done.runs] == [small.pk, large.pk]
    # Rows 2 and 4 differ; "account" and "Account." are the same answer normalised.
    assert [(row.number, row.differs) for row in done.rows] == [(2, True), (4, True), (1, False), (3, False)]
    assert [cell.answer for cell in done.rows[0].cells] == ["billing", "technical"]
    assert [cell.correct for cell in done.rows[0].cells] == [False, True]
    assert done.differing == 2 and done.right == [3, 3]
    assert done.rows[0].prompt == "Ticket 1" and done.rows[0].expected == "technical"


def test_what_cannot_be_compared_is_refused_saying_why(engineer, team, task, version):
    first = kept(task, "a", ["billing"] * 4)
    with pytest.raises(Invalid, match="choose 2 to 6 runs"):
        side_by_side.compare(actor=engineer, task=task, run_ids=[first.pk, first.pk])
    with pytest.raises(Invalid, match="choose 2 to 6 runs"):
        side_by_side.compare(
            actor=engineer, task=task, run_ids=[kept(task, f"e{i}", []).pk for i in range(7)]
        )
    with pytest.raises(Invalid, match="eval run numbers"):
        side_by_side.compare(actor=engineer, task=task, run_ids=[first.pk, "x"])
    queued = kept(task, "b", [], status=JobStatus.QUEUED)
    with pytest.raises(Invalid, match=f"#{queued.pk} has no answers to compare"):
        side_by_side.compare(actor=engineer, task=task, run_ids=[first.pk, queued.pk])
    held_out = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version)
    elsewhere = kept(task, "c", ["billing"] * 4, eval_set=held_out)
    with pytest.raises(Invalid, match="same eval set"):
        side_by_side.compare(actor=engineer, task=task, run_ids=[first.pk, elsewhere.pk])
    other = catalogue.create_task(actor=engineer, owner_team=team, name="Other", kind="generation")
    with pytest.raises(NotFound, match=f"#{first.pk} not found"):
        side_by_side.compare(actor=engineer, task=other, run_ids=[first.pk, elsewhere.pk])


def test_the_page_shows_the_runs_side_by_side_and_the_task_page_offers_finished_runs(client, org, task):
    small = kept(task, "small", ["billing", "billing", "account", "shipping"])
    large = kept(task, "large", ["billing", "technical", "account", "billing"])
    queued = kept(task, "queued", [], status=JobStatus.QUEUED)
    client.force_login(org["viewer"])
    board = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert f'name="run" value="{small.pk}"' in board and f'name="run" value="{queued.pk}"' not in board
    url = reverse("task-compare", args=[task.pk])
    page = client.get(url, {"run": [small.pk, large.pk]}).content.decode()
    assert "2 of 4 rows answered differently, shown first." in page
    assert page.index("Ticket 1") < page.index("Ticket 3") < page.index("Ticket 0")
    assert page.count('class="row--differs"') == 2 and "cell--wrong" in page
    refused = client.get(url, {"run": [small.pk, queued.pk]})
    assert refused.status_code == 400 and "has no answers to compare" in refused.content.decode()
    fragment = client.get(url, {"run": [small.pk, large.pk]}, headers={"HX-Request": "true"}).content.decode()
    assert 'id="compare-rows"' in fragment and "<html" not in fragment


def test_the_api_compares_runs_a_page_of_rows_at_a_time(client, org, task):
    small = kept(task, "small", ["billing", "billing", "account", "shipping"])
    large = kept(task, "large", ["billing", "technical", "account", "billing"])
    client.force_login(org["viewer"])
    url = f"/api/v1/tasks/{task.pk}/compare"
    body = client.get(url, {"run": [small.pk, large.pk], "limit": 1, "offset": 1}).json()
    assert [run["endpoint"] for run in body["runs"]] == ["small", "large"]
    assert (body["count"], body["differing"], body["right"]) == (4, 2, [3, 3])
    assert [row["number"] for row in body["rows"]] == [4]
    assert body["rows"][0]["cells"] == [
        {"answer": "shipping", "correct": True, "judge": None},
        {"answer": "billing", "correct": False, "judge": None},
    ]
    assert client.get(url, {"run": [small.pk, large.pk], "limit": 501}).status_code == 422
    assert client.get(url, {"run": [small.pk]}).status_code == 400
    assert client.get(url, {"run": [small.pk, 10**9]}).status_code == 404


def test_the_leaderboard_and_the_task_page_read_runs_without_their_answers(client, org, task):
    kept(task, "small", ["billing"] * 4)
    [entry] = leaderboard(task.eval_sets.get())
    assert "answers" in entry.run.get_deferred_fields()
    client.force_login(org["viewer"])
    page = client.get(reverse("task-detail", args=[task.pk]))
    assert page.status_code == 200
    assert all("answers" in run.get_deferred_fields() for run in page.context["runs"])


def test_the_leaderboard_reads_one_run_per_endpoint_however_many_it_has(task):
    """It read every finished run of the eval set (with its metrics: confusion counts of up to 1,000 labels)
    to keep each endpoint's latest; runs started from CI pile up without bound."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(5):
        kept(task, "small", ["billing"] * 4)
    kept(task, "large", ["billing"] * 4)
    with CaptureQueriesContext(connection) as queries:
        entries = leaderboard(task.eval_sets.get())
    assert sorted(entry.endpoint for entry in entries) == ["large", "small"]
    [query] = [q["sql"] for q in queries.captured_queries if "evalrun" in q["sql"].lower()]
    assert "DISTINCT ON" in query
