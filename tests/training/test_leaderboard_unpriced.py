"""An unpriced candidate (no cost per 1,000 requests) is not known to be the cheapest: at equal quality the
leaderboard lists it after the priced ones, and it is on no front."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests.training.test_eval_runs import finished
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixture
from tests.training.test_eval_runs import version as version  # noqa: F401 - the shared fixture
from training.evals.leaderboard import leaderboard

pytestmark = pytest.mark.django_db


def test_at_equal_quality_an_unpriced_candidate_is_listed_after_the_priced_ones(task):
    now = timezone.now()
    finished(task, "a-unpriced", 0.8, None, now)
    finished(task, "b-dear", 0.8, 2.0, now)
    finished(task, "c-cheap", 0.8, 0.5, now)
    finished(task, "d-better-unpriced", 0.9, None, now)
    board = leaderboard(task.eval_sets.get())
    assert [(e.endpoint, e.on_front) for e in board] == [
        ("d-better-unpriced", False),
        ("c-cheap", True),
        ("b-dear", False),
        ("a-unpriced", False),
    ]
