"""A rollout's decision, pure: hold while the window runs and too few canary requests came, roll back past
the error-rate or latency threshold (with the figures in the reason), promote when the window is over and
the canary is healthy over enough requests, never promote a canary that answered too few; and with a
judge, roll back on a low sampled judge score."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from serving.rollout_decisions import HOLD, PROMOTE, ROLLBACK, Judged, Policy, Stats, breach, decide

START = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
POLICY = Policy(ends_at=START + timedelta(minutes=10), min_requests=20)
DURING, AFTER = START + timedelta(minutes=3), START + timedelta(minutes=10)
BASELINE = Stats(requests=1000, errors=10, p95_ms=200.0)  # 1% errors


def test_too_few_canary_requests_hold_while_the_window_runs():
    verdict, reason = decide(BASELINE, Stats(requests=5, errors=0, p95_ms=190.0), POLICY, DURING)
    assert verdict == HOLD
    assert "5 of the 20" in reason


def test_a_failing_canary_with_too_few_requests_is_not_judged_before_the_window_ends():
    # One unlucky call out of three says little: wait for min_requests or for the window's end.
    assert decide(BASELINE, Stats(requests=3, errors=1, p95_ms=190.0), POLICY, DURING)[0] == HOLD


def test_a_healthy_canary_holds_until_the_window_ends_then_is_promoted():
    canary = Stats(requests=60, errors=1, p95_ms=210.0)
    assert decide(BASELINE, canary, POLICY, DURING)[0] == HOLD
    verdict, reason = decide(BASELINE, canary, POLICY, AFTER)
    assert verdict == PROMOTE
    assert "60 requests" in reason and "1.7%" in reason and "210 ms" in reason


def test_an_error_rate_past_the_threshold_rolls_back_early_with_the_figures():
    canary = Stats(requests=40, errors=4, p95_ms=190.0)  # 10% against 1%
    verdict, reason = decide(BASELINE, canary, POLICY, DURING)
    assert verdict == ROLLBACK
    assert "10.0%" in reason and "4 of 40" in reason and "1.0%" in reason and "9.0% higher" in reason
    assert "2.0% allowed" in reason


def test_an_error_rate_just_within_the_threshold_is_healthy():
    canary = Stats(requests=100, errors=3, p95_ms=200.0)  # 3% against 1%: +2 points, allowed
    assert decide(BASELINE, canary, POLICY, AFTER)[0] == PROMOTE


def test_p95_latency_past_the_ratio_rolls_back_with_the_figures():
    canary = Stats(requests=30, errors=0, p95_ms=450.0)  # 2.25x of 200 ms
    verdict, reason = decide(BASELINE, canary, POLICY, DURING)
    assert verdict == ROLLBACK
    assert "450 ms" in reason and "200 ms" in reason and "2.25x" in reason and "1.5x allowed" in reason


def test_latency_exactly_at_the_ratio_is_healthy():
    assert decide(BASELINE, Stats(requests=30, errors=0, p95_ms=300.0), POLICY, AFTER)[0] == PROMOTE


def test_at_the_windows_end_a_canary_under_min_requests_is_rolled_back_not_promoted():
    """A canary promoted to all the traffic on one healthy request (min_requests gated early rollbacks
    only): too little evidence, as too few judged samples are."""
    assert decide(BASELINE, Stats(requests=3, errors=1, p95_ms=190.0), POLICY, AFTER)[0] == ROLLBACK
    verdict, reason = decide(BASELINE, Stats(requests=1, errors=0, p95_ms=190.0), POLICY, AFTER)
    assert verdict == ROLLBACK and "answered 1 of the 20 requests needed to promote on" in reason
    assert decide(BASELINE, Stats(requests=20, errors=0, p95_ms=190.0), POLICY, AFTER)[0] == PROMOTE


def test_a_canary_that_answered_nothing_is_rolled_back_at_the_windows_end_not_promoted():
    assert decide(BASELINE, Stats(), POLICY, DURING)[0] == HOLD
    verdict, reason = decide(BASELINE, Stats(), POLICY, AFTER)
    assert verdict == ROLLBACK and "no request" in reason


def test_without_baseline_traffic_latency_is_not_compared_and_errors_count_against_zero():
    quiet = Stats()
    assert decide(quiet, Stats(requests=25, errors=0, p95_ms=5000.0), POLICY, AFTER)[0] == PROMOTE
    assert decide(quiet, Stats(requests=25, errors=1, p95_ms=100.0), POLICY, AFTER)[0] == ROLLBACK


def test_a_failing_baseline_does_not_make_an_equally_failing_canary_roll_back():
    baseline = Stats(requests=1000, errors=200, p95_ms=200.0)  # 20%
    assert decide(baseline, Stats(requests=50, errors=10, p95_ms=200.0), POLICY, AFTER)[0] == PROMOTE


@pytest.mark.parametrize(
    ("canary", "expected"),
    [
        (Stats(requests=10, errors=0, p95_ms=100.0), None),
        (Stats(requests=10, errors=5, p95_ms=100.0), "error rate"),
        (Stats(requests=10, errors=0, p95_ms=1000.0), "p95 latency"),
        (Stats(), None),
    ],
)
def test_breach_names_what_is_past_the_threshold(canary, expected):
    found = breach(BASELINE, canary, POLICY)
    assert (found is None) if expected is None else (expected in found)


def test_a_stricter_policy_rolls_back_what_the_default_promotes():
    strict = Policy(
        ends_at=POLICY.ends_at, min_requests=20, max_error_rate_increase=0.0, max_latency_ratio=1.1
    )
    canary = Stats(requests=50, errors=1, p95_ms=210.0)  # 2% against 1%; 1.05x
    assert decide(BASELINE, canary, POLICY, AFTER)[0] == PROMOTE
    assert decide(BASELINE, canary, strict, AFTER)[0] == ROLLBACK


def test_stats_as_shown():
    assert Stats(requests=8, errors=1, p95_ms=123.456).as_dict() == {
        "requests": 8,
        "errors": 1,
        "error_rate": 0.125,
        "error_percent": "12.5",
        "p95_ms": 123.5,
    }


JUDGED = Policy(
    ends_at=START + timedelta(minutes=10), min_requests=20, min_judge_score=0.6, min_judge_samples=4
)
HEALTHY = Stats(requests=60, errors=0, p95_ms=190.0)


def test_a_judged_canary_holds_until_the_judge_has_scored_enough_samples():
    verdict, reason = decide(BASELINE, HEALTHY, JUDGED, DURING, Judged().plus([0.0, 0.0, None]))
    assert verdict == HOLD, "two scores (one reply unreadable) of the four needed decide nothing"
    assert "over 2 sampled answers (of 4 needed)" in reason


def test_a_judge_score_under_the_threshold_rolls_back_early_with_the_figures():
    judged = Judged().plus([0.25, 0.5, 0.75, 0.5])
    verdict, reason = decide(BASELINE, HEALTHY, JUDGED, DURING, judged)
    assert verdict == ROLLBACK
    assert reason == "Rolled back: judge score 0.50 over 4 sampled canary answers, under the 0.60 required."


def test_a_judge_score_at_or_over_the_threshold_promotes_when_the_window_ends():
    judged = Judged().plus([0.5, 0.75, 0.5, 0.65])  # 0.60: at the threshold is within it
    assert decide(BASELINE, HEALTHY, JUDGED, DURING, judged)[0] == HOLD
    verdict, reason = decide(BASELINE, HEALTHY, JUDGED, AFTER, judged)
    assert verdict == PROMOTE and "Judge score 0.60 over 4 sampled answers" in reason


def test_a_judged_canary_is_not_promoted_on_too_few_scored_samples():
    verdict, reason = decide(BASELINE, HEALTHY, JUDGED, AFTER, Judged().plus([1.0, 1.0]))
    assert verdict == ROLLBACK
    assert "the judge scored 2 sampled canary answers, fewer than the 4 needed" in reason


def test_without_a_judge_its_scores_decide_nothing():
    assert decide(BASELINE, HEALTHY, POLICY, AFTER, Judged().plus([0.0] * 10))[0] == PROMOTE


def test_the_judges_tally_keeps_unreadable_replies_out_of_the_mean():
    judged = Judged().plus([1.0, None]).plus([0.5])
    assert (judged.samples, judged.unreadable, judged.score) == (2, 1, 0.75)
    assert Judged.of(judged.as_dict()) == judged


def test_a_healthy_canary_with_no_replica_ready_is_never_promoted():
    canary = Stats(requests=60, errors=0, p95_ms=190.0)
    assert decide(BASELINE, canary, POLICY, DURING, canary_ready=False)[0] == HOLD, "it may come back"
    verdict, reason = decide(BASELINE, canary, POLICY, AFTER, canary_ready=False)
    assert verdict == ROLLBACK and "no replica ready" in reason
    assert decide(BASELINE, canary, POLICY, AFTER)[0] == PROMOTE
