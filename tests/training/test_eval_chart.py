"""The leaderboard's chart of quality against cost per 1,000 requests: every priced candidate a point, the
front's points marked and joined from the cheapest, fine cost ticks written readably, and the task page
drawing it with the front's rows marked."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.charts import tick_label
from tests.training.test_eval_runs import finished
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import version as version  # noqa: F401 - the shared fixture
from training.evals.leaderboard import Entry, leaderboard, quality_cost_chart

pytestmark = pytest.mark.django_db


def board(task, *candidates) -> list[Entry]:
    for name, quality, cost in candidates:
        finished(task, name, quality, cost, timezone.now())
    return leaderboard(task.eval_sets.get())


def test_the_chart_draws_priced_candidates_and_joins_the_front_from_the_cheapest(task):
    chart = quality_cost_chart(
        board(task, ("big", 0.9, 2.0), ("small", 0.8, 1.0), ("worse", 0.7, 3.0), ("unpriced", 0.95, None)),
        "EUR",
    )
    assert [(p["label"], p["front"]) for p in chart["points"]] == [
        ("small", True),
        ("big", True),
        ("worse", False),
    ]
    # 0..4 EUR over 572 units from x=48; 0..100% over 188 units down from y=14.
    assert chart["front_line"] == "191,51.6 334,32.8"
    assert [t["label"] for t in chart["x_ticks"]] == ["0", "1", "2", "3", "4"]
    assert [t["label"] for t in chart["y_ticks"]] == ["0%", "25%", "50%", "75%", "100%"]
    assert chart["summary"] == (
        "3 candidates by quality and cost per 1,000 requests; on the front: small (80.0% at 1.0000), "
        "big (90.0% at 2.0000); 1 not priced, not drawn."
    )


def test_a_single_candidate_is_a_point_without_a_line_and_none_priced_is_no_chart(task):
    alone = quality_cost_chart(board(task, ("only", 0.5, 0.02)), "EUR")
    assert len(alone["points"]) == 1 and alone["front_line"] == ""
    assert quality_cost_chart(board(task, ("only", 0.5, None)), "EUR") is None


def test_fine_cost_ticks_keep_the_decimals_their_step_needs():
    assert [tick_label(0.005 * i, 0.005) for i in range(3)] == ["0", "0.005", "0.010"]
    assert tick_label(0.04, 0.02) == "0.04" and tick_label(2000, 500) == "2k"


def test_the_task_page_draws_the_chart_and_marks_the_fronts_rows(client, org, task):
    board(task, ("tuned-135m", 0.94, 0.02), ("general-270m", 0.44, 0.05))
    client.force_login(org["viewer"])
    page = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert 'data-testid="quality-cost-chart"' in page
    assert "on the front: tuned-135m (94.0% at 0.0200)." in page
    assert page.count('class="row--front"') == 1
    assert 'class="chart-point chart-point--front"' in page
