"""A task's page and its REST answer build all its eval sets' leaderboards at once: as many queries for four
eval sets as for one, and each leaderboard built with the others is the one built alone (its runs, order,
front and comparability)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.training.test_portfolio import finished
from tests.training.test_portfolio import world as world  # noqa: F401 - the shared fixture
from training.choices import JobStatus
from training.evals import catalogue, comparability
from training.evals.leaderboard import leaderboard, leaderboards
from training.evals.models import EndpointEvalRun, EvalSet
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db


def another_version(version: DatasetVersion, number: int) -> DatasetVersion:
    """A copy of ``version`` as another version of its dataset (an eval set is one per version)."""
    fields = {
        f.attname: getattr(version, f.attname)
        for f in DatasetVersion._meta.concrete_fields
        if not f.primary_key
    }
    fields.update(number=number, content_sha256=f"{number:064x}")
    return DatasetVersion.objects.create(**fields)


def measured_as_served(*runs: EndpointEvalRun) -> None:
    """Record what each run's endpoint serves now, so the leaderboard asks whether it was repointed."""
    for run in runs:
        run.measured_routes = comparability.measured_now(run.endpoint_id)
        run.save(update_fields=["measured_routes"])


def add_eval_sets(world, engineer, count: int) -> list[EvalSet]:
    first = world["eval_set"].dataset_version
    added = []
    for _ in range(count):
        number = DatasetVersion.objects.filter(dataset=first.dataset).count() + 1
        eval_set = catalogue.add_eval_set(
            actor=engineer, task=world["task"], dataset_version=another_version(first, number), source="all"
        )
        measured_as_served(
            finished(eval_set, world["general"], quality=0.5, cost=0.05, p50=300.0),
            finished(eval_set, world["tuned"], quality=0.7, cost=0.02, p50=100.0),
        )
        added.append(eval_set)
    return added


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return len(captured)


def test_a_task_page_and_its_api_answer_cost_as_many_queries_for_four_eval_sets_as_for_one(
    client, org, world, engineer
):
    measured_as_served(*EndpointEvalRun.objects.filter(eval_set=world["eval_set"]))
    page = reverse("task-detail", kwargs={"task_id": world["task"].pk})
    api = f"/api/v1/tasks/{world['task'].pk}"
    client.force_login(org["viewer"])
    one = (queries(client, page), queries(client, api))

    add_eval_sets(world, engineer, 3)

    assert (queries(client, page), queries(client, api)) == one
    assert client.get(page).content.decode().count('id="board-') == 4
    boards = [s["leaderboard"] for s in client.get(api).json()["eval_sets"]]
    assert [[e["endpoint"] for e in board] for board in boards] == [["tuned", "general"]] * 4


def test_each_leaderboard_built_with_the_others_is_the_one_built_alone(world, engineer):
    first, second = world["eval_set"], *add_eval_sets(world, engineer, 1)
    general, tuned = world["general"], world["tuned"]
    # On the first set: a newer run of general replaces its older one, a failed run counts for nothing.
    finished(first, general, quality=0.6, cost=0.04, p50=200.0, ago=timedelta(minutes=5))
    EndpointEvalRun.objects.create(
        owner_team=first.task.owner_team,
        eval_set=first,
        endpoint=tuned,
        endpoint_name=tuned.name,
        status=JobStatus.FAILED,
        row_limit=12,
        metrics={"quality": 1.0},
    )
    # On the second: tuned measured routes it no longer serves, a deleted endpoint scored fewer rows than
    # production's run.
    EndpointEvalRun.objects.filter(eval_set=second, endpoint=tuned).update(measured_routes=[{"gone": 1}])
    EndpointEvalRun.objects.create(
        owner_team=second.task.owner_team,
        eval_set=second,
        endpoint=None,
        endpoint_name="retired",
        status=JobStatus.SUCCEEDED,
        row_limit=3,
        rows_done=3,
        rows_total=3,
        metrics={"quality": 0.99, "cost_per_1k_requests": 0.001},
    )
    empty = add_eval_sets(world, engineer, 1)[0]
    EndpointEvalRun.objects.filter(eval_set=empty).delete()
    sets = list(world["task"].eval_sets.select_related("dataset_version").order_by("-created_at", "-id"))

    together = leaderboards(sets)

    def seen(board):
        return [
            (e.endpoint, e.run.pk, e.quality, e.cost_per_1k, e.on_front, e.incomparable, e.cells)
            for e in board
        ]

    assert list(together) == [s.pk for s in sets]
    assert {pk: seen(board) for pk, board in together.items()} == {s.pk: seen(leaderboard(s)) for s in sets}
    assert together[empty.pk] == []
    assert [e.endpoint for e in together[first.pk]] == ["tuned", "general"]
    assert together[first.pk][1].quality == 0.6
    assert [(e.endpoint, e.comparable) for e in together[second.pk]] == [
        ("general", True),
        ("retired", False),
        ("tuned", False),
    ]
    assert "repointed" in together[second.pk][2].incomparable
    assert leaderboards([]) == {}
