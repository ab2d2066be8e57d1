"""The portfolio hint's margin is exact: a candidate exactly the margin under production, and cheaper, is
within it; one exactly the margin over production, at the same cost, is not better by more than it. In
floats 0.14 - 0.02 is 0.12000000000000001, which put the first outside and the second beyond."""

from __future__ import annotations

import pytest

from training.evals.portfolio import Figures, pick_candidate


def fig(name: str, quality: float, cost: float) -> Figures:
    return Figures(endpoint=name, quality=quality, cost_per_1k=cost)


@pytest.mark.parametrize(
    ("production", "candidate", "margin"),
    [
        (7 / 50, 6 / 50, 0.02),
        (0.14, 0.12, 0.02),
        (0.20, 0.18, 0.02),
        (0.05, 0.03, 0.02),
        (0.26, 0.24, 0.02),
        (0.63, 0.57, 0.06),
    ],
)
def test_a_cheaper_candidate_exactly_the_margin_under_production_is_hinted(production, candidate, margin):
    chosen = pick_candidate(fig("general", production, 1.0), [fig("tuned", candidate, 0.5)], margin)
    assert chosen is not None and chosen.endpoint == "tuned"


@pytest.mark.parametrize(
    ("production", "candidate", "margin"),
    [(0.12, 0.14, 0.02), (6 / 50, 7 / 50, 0.02), (0.57, 0.63, 0.06)],
)
def test_a_candidate_exactly_the_margin_over_production_at_its_cost_is_not_hinted(
    production, candidate, margin
):
    assert pick_candidate(fig("general", production, 1.0), [fig("tuned", candidate, 1.0)], margin) is None


def test_a_candidate_just_past_the_margin_either_way_is_still_told_apart():
    production = fig("general", 0.14, 1.0)
    assert pick_candidate(production, [fig("tuned", 0.1199, 0.5)], 0.02) is None
    assert pick_candidate(production, [fig("tuned", 0.1601, 1.0)], 0.02) is not None
