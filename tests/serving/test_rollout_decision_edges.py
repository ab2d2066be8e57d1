"""The edges of a rollout's decision where a comparison with the baseline says nothing: a canary failing
every call beside a baseline failing every call was "healthy" and promoted, and a canary whose p95 was
90 seconds was promoted when the baseline answered nothing to compare its latency with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from serving.rollout_decisions import HOLD, PROMOTE, ROLLBACK, Policy, Stats, breach, decide

START = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
POLICY = Policy(ends_at=START + timedelta(minutes=10), min_requests=20)
DURING, AFTER = START + timedelta(minutes=3), START + timedelta(minutes=10)
QUIET = Stats()


def test_a_canary_failing_every_call_is_rolled_back_even_beside_a_baseline_failing_every_call():
    broken = Stats(requests=200, errors=200, p95_ms=50.0)
    verdict, reason = decide(broken, Stats(requests=30, errors=30, p95_ms=50.0), POLICY, AFTER)
    assert verdict == ROLLBACK
    assert "100.0% (30 of 30 canary requests), over the 50.0% no canary may fail" in reason
    assert decide(broken, Stats(requests=30, errors=30, p95_ms=50.0), POLICY, DURING)[0] == ROLLBACK, "early"


def test_the_error_ceiling_is_over_half_the_calls_and_counts_whatever_the_baseline():
    failing = Stats(requests=1000, errors=600, p95_ms=200.0)  # 60%
    assert breach(failing, Stats(requests=100, errors=50, p95_ms=200.0), POLICY) is None, "half is at it"
    assert "over the 50.0%" in breach(failing, Stats(requests=100, errors=51, p95_ms=200.0), POLICY)


def test_without_baseline_traffic_a_canary_too_slow_to_be_healthy_is_not_promoted_on_latency_never_compared():
    slow = Stats(requests=25, errors=0, p95_ms=90_000.0)
    assert decide(QUIET, slow, POLICY, DURING)[0] == HOLD, "the baseline may yet answer: hold until the end"
    verdict, reason = decide(QUIET, slow, POLICY, AFTER)
    assert verdict == ROLLBACK
    assert "baseline answered no request to compare" in reason and "90000 ms is over the 60000 ms" in reason


def test_without_baseline_traffic_a_canary_passing_the_absolute_checks_is_promoted_saying_nothing_was_compared():
    verdict, reason = decide(QUIET, Stats(requests=25, errors=0, p95_ms=800.0), POLICY, AFTER)
    assert verdict == PROMOTE
    assert "p95 800 ms against nothing: no baseline request" in reason


def test_a_healthy_canary_beside_a_healthy_baseline_is_still_promoted():
    baseline = Stats(requests=1000, errors=10, p95_ms=200.0)
    verdict, reason = decide(baseline, Stats(requests=60, errors=1, p95_ms=210.0), POLICY, AFTER)
    assert verdict == PROMOTE
    assert "p95 210 ms against 200 ms" in reason
    slow_but_comparable = Stats(requests=1000, errors=0, p95_ms=80_000.0)
    assert decide(slow_but_comparable, Stats(requests=60, p95_ms=90_000.0), POLICY, AFTER)[0] == PROMOTE, (
        "with a baseline to compare with, the ratio decides, not the uncompared ceiling"
    )
