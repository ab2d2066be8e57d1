"""The portfolio benchmark's pure parts, without running it: ratios against the reference model, the
few-shot prompt and its examples, and the JSON it writes. (The benchmark itself is run by
`make bench-portfolio`, never as a test.)"""

from __future__ import annotations

import json

from benchmarks.portfolio import report
from benchmarks.portfolio.report import Candidate

GEMMA = Candidate(report.REFERENCE, "bench-gemma", 0.4, 200.0, 0.5, 20, "/v1/completions")
TUNED = Candidate("tuned", "bench-smol-tuned", 1.0, 50.0, 0.05, 20, "chat")
UNKNOWN = Candidate("unscored", "x", None, None, None, 0, "chat")


def test_ratios_are_multiples_of_the_reference_figures():
    ratios = report.ratios([TUNED, GEMMA])
    assert ratios == {"tuned": {"accuracy": 2.5, "latency_p50": 0.25, "cost_per_1k_requests": 0.1}}


def test_an_unknown_figure_or_a_zero_reference_gives_no_ratio_rather_than_a_wrong_one():
    free = Candidate(report.REFERENCE, "g", 0.0, 200.0, 0.0, 20, "completions")
    ratios = report.ratios([UNKNOWN, TUNED, free])
    assert ratios["unscored"] == {"accuracy": None, "latency_p50": None, "cost_per_1k_requests": None}
    assert ratios["tuned"]["accuracy"] is None and ratios["tuned"]["latency_p50"] == 0.25
    assert report.ratios([TUNED]) == {}, "without the reference there is nothing to compare with"


def test_the_few_shot_prompt_shows_each_example_then_leaves_the_queue_open():
    prompt = report.few_shot_prompt(
        [("I was charged\ntwice", "billing"), ("Where is my parcel?", "shipping")], "App crashes", "Route it."
    )
    assert prompt == (
        "Route it.\n\nTicket: I was charged twice\nQueue: billing\n\n"
        "Ticket: Where is my parcel?\nQueue: shipping\n\nTicket: App crashes\nQueue:"
    )


def test_shots_take_the_first_rows_of_each_label_interleaved():
    rows = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b")]
    assert report.pick_shots(rows, 2) == [("a1", "a"), ("b1", "b"), ("c1", "c"), ("a2", "a"), ("b2", "b")]


def test_the_result_holds_every_candidate_the_ratios_and_the_cascade_place_as_json():
    result = report.result([TUNED, GEMMA], context={"task": {"rows": 80}}, cascade={"measured": False})
    assert json.loads(json.dumps(result)) == result
    assert [c["name"] for c in result["candidates"]] == ["tuned", report.REFERENCE]
    assert result["ratios_vs"] == report.REFERENCE and result["cascade"] == {"measured": False}
    assert result["task"] == {"rows": 80}
    lines = report.table([TUNED, UNKNOWN]).splitlines()
    assert "100.0%" in lines[2] and "0.0500" in lines[2] and lines[3].count("n/a") == 3


def test_the_cascade_asks_gemma_the_same_few_shot_prompt_it_is_scored_with():
    from serving.gateway import hop_prompts

    shots = [("I was charged twice", "billing"), ("The app crashes", "technical")]
    template = report.few_shot_prompt(shots, "{input}", "Route it.")
    ticket = "Where is my parcel? {order 12}"
    assert hop_prompts.render(template, ticket) == report.few_shot_prompt(shots, ticket, "Route it.")
