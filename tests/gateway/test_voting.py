"""The decisions of composite endpoints, as pure functions: a router's label, a cascade's confidence and
escalation, a vote's winner; and what a composite request reserves."""

from __future__ import annotations

import math

import pytest

from serving.gateway import composite, payloads, voting
from serving.gateway.routing import Composite, EndpointInfo


def chat_choice(text: str, logprobs: list | None = None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": value} for value in logprobs]}
    return choice


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Billing.", "billing"), ("  billing\n", "billing"), ('"Tech" support', "tech"), ("Réseau", "reseau")],
)
def test_a_classifiers_answer_is_read_as_its_first_word_in_lower_case(answer, expected):
    assert voting.label(answer) == expected


def test_an_unknown_or_empty_label_goes_to_the_default():
    table = {"billing": "billing-ep", "tech": "tech-ep"}
    assert voting.route("Billing!", table, "general") == ("billing", "billing-ep")
    assert voting.route("refunds", table, "general") == ("refunds", "general")
    assert voting.route("...", table, "general") == ("", "general")
    assert voting.route(None, table, "general") == ("", "general")


def test_confidence_is_the_mean_token_logprob_of_chat_or_completion_answers():
    assert voting.mean_logprob(chat_choice("a b", [-0.5, -1.5])) == -1.0
    completion = {"text": "a b", "logprobs": {"token_logprobs": [-0.2, None, -0.4]}}
    assert math.isclose(voting.mean_logprob(completion), -0.3)


@pytest.mark.parametrize(
    "choice",
    [
        chat_choice("a"),
        chat_choice("a", []),
        {"logprobs": "x"},
        "nonsense",
        chat_choice("a", [float("nan"), "x"]),
    ],
)
def test_an_answer_without_usable_logprobs_has_no_confidence(choice):
    assert voting.mean_logprob(choice) is None


def test_a_cascade_escalates_under_the_threshold_or_without_a_confidence():
    assert voting.escalate(-1.2, -1.0)
    assert not voting.escalate(-0.8, -1.0)
    assert not voting.escalate(-1.0, -1.0), "at the threshold the small answer is kept"
    assert voting.escalate(None, -5.0)


def test_a_majority_vote_counts_answers_alike_up_to_case_spacing_and_punctuation():
    samples = [chat_choice(t) for t in ["Lyon", "Paris.", " paris", "Rome", "PARIS!"]]
    assert voting.majority(samples) == 1
    assert voting.agreement(samples, 1) == 0.6


def test_a_tied_vote_goes_to_the_answer_seen_first():
    assert voting.majority([chat_choice(t) for t in ["b", "a", "a", "b"]]) == 0
    assert voting.majority([]) == 0


def test_best_of_n_picks_the_most_confident_sample():
    samples = [
        chat_choice("a", [-2.0]),
        chat_choice("b"),
        chat_choice("c", [-0.1, -0.3]),
        chat_choice("d", [-0.2]),
    ]
    assert voting.best_of_n(samples) == 2


def _endpoint(name: str, price: float, max_len: int = 100) -> EndpointInfo:
    return EndpointInfo(
        name=name,
        team_id=1,
        routes=(),
        fallback=None,
        input_micros_per_token=price,
        output_micros_per_token=price,
        max_model_len=max_len,
    )


def test_a_cascade_reserves_both_hops_and_a_vote_all_its_samples():
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    found = {"s": _endpoint("s", 1), "l": _endpoint("l", 10)}
    tokens, money, _ = composite.reservation(
        Composite("cascade", small="s", large="l", threshold=-1), found, shape, ""
    )
    assert (tokens, money) == (30 + 30, 30 * 1 + 30 * 10)
    tokens, money, _ = composite.reservation(Composite("vote", sampler="s", n=4), found, shape, "")
    assert (tokens, money) == (20 + 4 * 10, 60)


def test_a_router_reserves_its_question_and_its_costliest_specialist():
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    found = {"c": _endpoint("c", 0), "a": _endpoint("a", 1), "b": _endpoint("b", 5)}
    router = Composite("router", classifier="c", table={"x": "a"}, default="b", label_tokens=4)
    tokens, money, costliest = composite.reservation(router, found, shape, "hello")
    question = 5 + payloads.CHAT_TEMPLATE_TOKENS + 4
    assert tokens == question + 30 and money == 30 * 5
    assert [hop.name for hop, _ in costliest] == ["c", "b"]
