"""The eval run's scores, pure: accuracy, F1 per label and its mean, exact match and containment,
percentiles, cost per 1,000 requests, and the quality/cost front."""

from __future__ import annotations

from decimal import Decimal

import pytest

from training.evals import metrics


def test_accuracy_is_the_share_of_agreeing_pairs_and_none_without_rows():
    assert metrics.accuracy([("a", "a"), ("b", "a"), ("b", "b"), ("c", "c")]) == 0.75
    assert metrics.accuracy([]) is None


def test_f1_per_label_and_its_macro_mean():
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ("c", "a")]
    scores = metrics.f1_by_label(pairs)
    # a: tp 1, fp 1 (the c row), fn 1 -> p 0.5, r 0.5; b: tp 2, fp 1, fn 0 -> p 2/3, r 1; c: nothing right.
    assert scores["a"] == pytest.approx(0.5)
    assert scores["b"] == pytest.approx(0.8)
    assert scores["c"] == 0.0
    assert metrics.macro_f1(scores) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.macro_f1({}) is None


def test_exact_match_and_containment_compare_normalised_answers():
    expected = ["Order 123", "billing", "", "Paris"]
    answers = ["order 123.", "It is billing", "anything", "  PARIS!"]
    assert metrics.exact_match(expected, answers) == 0.5  # "order 123." and "PARIS!" match
    # An empty expected answer is contained in every string: it counts for none.
    assert metrics.containment(expected, answers) == 0.75
    assert metrics.exact_match([], []) is None and metrics.containment([], []) is None
    # As whole words: "2" is not in "12 items", nor "paris" in "comparison".
    assert metrics.containment(["2", "paris", "2"], ["12 items", "a comparison", "2 items"]) == pytest.approx(
        1 / 3
    )
    with pytest.raises(ValueError):
        metrics.exact_match(["a"], [])


def test_percentiles_interpolate_between_ranks():
    values = [40.0, 10.0, 30.0, 20.0]
    assert metrics.percentile(values, 50) == 25.0
    assert metrics.percentile(values, 95) == pytest.approx(38.5)
    assert metrics.percentile(values, 0) == 10.0 and metrics.percentile(values, 100) == 40.0
    assert metrics.percentile([7.0], 95) == 7.0
    assert metrics.percentile([], 50) is None


def test_cost_per_1k_requests_prices_the_mean_request():
    # 1,000 input and 200 output tokens per request at 0.50 / 1.50 per million: 0.0008 per request.
    cost = metrics.cost_per_1k_requests([(1000, 200), (1000, 200)], Decimal("0.50"), Decimal("1.50"))
    assert cost == Decimal("0.8")
    assert metrics.cost_per_1k_requests([], Decimal(1), Decimal(1)) is None


def test_the_front_keeps_candidates_no_other_beats_on_both_quality_and_cost():
    candidates = [
        ("big", 0.9, 2.0),
        ("small", 0.8, 1.0),
        ("worse", 0.7, 3.0),  # beaten by both
        ("tie-big", 0.9, 2.0),  # equal to big: neither beats the other
        ("free-bad", 0.1, 0.0),  # cheapest: on the front
        ("unpriced", 0.99, None),  # cannot be compared: on no front, beats none
    ]
    assert metrics.front(candidates) == {"big", "small", "tie-big", "free-bad"}
    assert metrics.front([]) == set()


def test_answer_scores_by_task_kind():
    expected = ["billing", "technical", "billing", "account"]
    answers = ["Billing.", "the technical queue", "account", "account"]
    classification = metrics.answer_scores("classification", expected, answers)
    assert classification["accuracy"] == 0.75  # "the technical queue" names technical
    assert classification["quality"] == classification["accuracy"]
    assert classification["f1_by_label"]["billing"] == pytest.approx(2 / 3)
    assert classification["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert classification["confusion"] == {
        "account": {"account": 1},
        "billing": {"account": 1, "billing": 1},
        "technical": {"technical": 1},
    }
    extraction = metrics.answer_scores("extraction", expected, answers)
    assert "accuracy" not in extraction and extraction["quality"] == extraction["exact_match"] == 0.5
    generation = metrics.answer_scores("generation", expected, answers)
    assert generation["quality"] == generation["contains"] == 0.75


def test_the_confusion_table_marks_hits_and_misses_and_is_left_out_past_twenty_labels():
    from training.evaluation import OTHER
    from training.views.evals import CONFUSION_LABELS, confusion_table

    table = confusion_table({"billing": {"billing": 2, OTHER: 1}, "shipping": {"billing": 1}})
    assert table["columns"] == ["billing", "shipping", OTHER]
    assert [[(c["count"], c["tone"]) for c in row["cells"]] for row in table["rows"]] == [
        [(2, "hit"), (0, ""), (1, "miss")],
        [(1, "miss"), (0, ""), (0, "")],
    ]
    # A run scored before the catch-all column was capitalised reads the same.
    assert confusion_table({"billing": {"billing": 2, "(other)": 1}, "shipping": {"billing": 1}}) == table
    many = {f"label {i}": {f"label {i}": 1} for i in range(CONFUSION_LABELS + 1)}
    assert confusion_table(many) is None and confusion_table({}) is None
    assert confusion_table(dict(list(many.items())[:CONFUSION_LABELS])) is not None
