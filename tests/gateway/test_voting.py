"""The decisions of composite endpoints, as pure functions: a router's label, a cascade's confidence and
escalation, a vote's winner, a verifier's verdict and what it is asked; and what a composite request reserves."""

from __future__ import annotations

import math

import pytest

from serving.gateway import composite, hop_admission, hop_prompts, payloads, verifier, voting
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


def test_samples_without_text_do_not_vote_unless_none_has_any():
    """Cut off, or no answer at all: two blanks outvoted or tied one real answer and were returned."""
    assert voting.majority([chat_choice(t) for t in ["", "Paris", "", "Paris"]]) == 1
    assert voting.majority([chat_choice(t) for t in ["", "", "", "Paris"]]) == 3
    assert voting.majority([chat_choice("") for _ in range(3)]) == 0


def test_best_of_n_picks_the_most_confident_sample():
    samples = [
        chat_choice("a", [-2.0]),
        chat_choice("b"),
        chat_choice("c", [-0.1, -0.3]),
        chat_choice("d", [-0.2]),
    ]
    assert voting.best_of_n(samples) == 2


def _endpoint(
    name: str, price: float, max_len: int = 100, fallback: str | None = None, **more
) -> EndpointInfo:
    return EndpointInfo(
        name=name,
        team_id=1,
        routes=(),
        fallback=fallback,
        input_micros_per_token=price,
        output_micros_per_token=price,
        max_model_len=max_len,
        **more,
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
    tokens, money, steps = composite.reservation(router, found, shape, "hello")
    question = 5 + payloads.CHAT_TEMPLATE_TOKENS + 4
    assert tokens == question + 30 and money == 30 * 5
    assert [sorted(hop.name for hop, _ in step) for step in steps] == [["c"], ["a", "b"]]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Yes.", True),
        (" yes\n", True),
        ("No", False),
        ("no, it is wrong", False),
        ("Maybe", None),
        (None, None),
    ],
)
def test_a_verifiers_answer_is_read_as_yes_no_or_unclear(answer, expected):
    assert voting.verdict(answer) is expected


def test_best_of_n_by_a_verifier_asks_about_each_distinct_answer_once():
    samples = [chat_choice(t) for t in ["Lyon", "Paris.", "paris", "Rome", "Lyon", "lyon"]]
    assert voting.distinct_answers(samples) == [0, 1, 3]


def test_best_of_n_by_a_verifier_takes_the_most_frequent_accepted_answer():
    samples = [chat_choice(t) for t in ["Lyon", "Paris.", "paris", "Rome", "Lyon", "lyon"]]
    # Lyon is the majority, but the verifier accepts only Paris and Rome: the more frequent of those wins.
    assert voting.verified_pick(samples, {0: False, 1: True, 3: True}) == (1, True)
    assert voting.verified_pick(samples, {0: True, 1: None, 3: True}) == (0, True)


def test_when_the_verifier_accepts_no_answer_the_majority_stands_unverified():
    samples = [chat_choice(t) for t in ["Lyon", "Paris", "Lyon"]]
    assert voting.verified_pick(samples, {0: False, 1: None}) == (0, False)


def test_a_verifier_reserves_its_question_per_sample_at_worst():
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    found = {"s": _endpoint("s", 1, 10_000), "l": _endpoint("l", 10, 10_000), "v": _endpoint("v", 2, 10_000)}
    cascade = Composite("cascade", small="s", large="l", confidence="verifier", verifier="v")
    question = verifier.shape(cascade, found["v"].max_model_len, "hello")
    (bound,) = question.prompts
    assert bound >= len(b"hello") + verifier.ANSWER_MAX, "the question and the whole answer shown to it"
    tokens, money, steps = composite.reservation(cascade, found, shape, "hello")
    asked = bound + verifier.VERDICT_TOKENS
    assert (tokens, money) == (30 + asked + 30, 30 * 1 + asked * 2 + 30 * 10)
    assert [[hop.name for hop, _ in step] for step in steps] == [["s"], ["v"], ["l"]]
    vote = Composite("vote", sampler="s", n=4, method="verifier", verifier="v")
    tokens, money, _ = composite.reservation(vote, found, shape, "hello")
    assert (tokens, money) == (20 + 4 * 10 + 4 * asked, 60 + 4 * asked * 2)


def test_a_verifier_is_asked_by_chat_or_by_a_plain_prompt_when_it_has_no_chat_template():
    cascade = Composite(
        "cascade", small="s", large="l", confidence="verifier", verifier="v", verifier_prompt="Be strict."
    )
    kind, body = verifier.request(cascade, _endpoint("v", 1, 4096), 4096, "Capital of France?", "Paris")
    assert kind == "chat" and body["messages"][0] == {"role": "system", "content": "Be strict."}
    assert (
        "Capital of France?" in body["messages"][1]["content"] and "Paris" in body["messages"][1]["content"]
    )
    assert (body["max_tokens"], body["temperature"]) == (verifier.VERDICT_TOKENS, 0)
    base = EndpointInfo(**{**_endpoint("v", 1, 100_000).__dict__, "no_chat": "a base model"})
    kind, body = verifier.request(cascade, base, 100_000, "Capital of France?", "x" * 20_000)
    assert (
        kind == "completion"
        and body["prompt"].startswith("Be strict.")
        and body["prompt"].endswith("Verdict:")
    )
    assert len(body["prompt"]) < 20_000, "the answer shown is cut to its bound"


def test_a_templated_large_hop_reserves_its_plain_prompt_not_the_chat_request():
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    large = EndpointInfo(**{**_endpoint("l", 10, 10_000).__dict__, "no_chat": "a base model"})
    cascade = Composite("cascade", small="s", large="l", threshold=-1, large_template="x" * 100 + "{input}")
    found = {"s": _endpoint("s", 1, 10_000), "l": large}
    tokens, money, _ = composite.reservation(cascade, found, shape, "hello", "chat")
    assert (tokens, money) == (30 + (107 + 5 + 10), 30 + (107 + 5 + 10) * 10)
    assert composite.reservation(cascade, found, shape, "hello", "completion")[0] == 60, (
        "a prompt is passed as is"
    )


def test_a_template_repeating_the_placeholder_reserves_the_message_each_time_it_is_filled_in():
    """The service takes one {input}; a config row edited by hand may hold more, and render() fills every
    one: the engine then bills the message that many times, and so must the reservation."""
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    large = EndpointInfo(**{**_endpoint("l", 10, 100_000).__dict__, "no_chat": "a base model"})
    template = "{input}\n" * 10
    cascade = Composite("cascade", small="s", large="l", threshold=-1, large_template=template)
    found = {"s": _endpoint("s", 1, 10_000), "l": large}
    text = "x" * 1200
    tokens, _, _ = composite.reservation(cascade, found, shape, text, "chat")
    assert tokens >= 30 + len(hop_prompts.render(template, text)) + 10


def test_a_classifier_is_asked_the_start_of_a_message_its_context_cannot_hold():
    """A 2,000-token classifier before specialists of 32k: a long ticket made the classifier's engine refuse
    the question (400), and the router the whole request, though any specialist could have answered it."""
    router = Composite(
        "router", classifier="c", table={"x": "a"}, default="a", label_tokens=4, system="Name it."
    )
    small = _endpoint("c", 1, 300)
    text = "é" + "word " * 400
    kind, body = hop_prompts.classifier_request(router, small, 300, text)
    shown = body["messages"][-1]["content"]
    assert (
        text.startswith(shown)
        and len(shown.encode()) == 300 - len(b"Name it.") - payloads.CHAT_TEMPLATE_TOKENS - 4
    )
    (prompt,) = hop_prompts.classifier_shape(router, 300, text).prompts
    assert prompt + 4 <= 300, "the question and its label fit the context (bytes bound tokens)"
    assert (
        hop_prompts.classifier_request(router, _endpoint("c", 1, 100_000), 100_000, text)[1]["messages"][-1][
            "content"
        ]
        == text
    )


def test_a_verifier_is_shown_what_its_context_can_hold():
    cascade = Composite("cascade", small="s", large="l", confidence="verifier", verifier="v")
    small = _endpoint("v", 1, 1_000)
    question, answer = "q" * 5_000, "a" * 5_000
    kind, body = verifier.request(cascade, small, 1_000, question, answer)
    shown = body["messages"][1]["content"]
    (bound,) = verifier.shape(cascade, 1_000, question).prompts
    assert bound + verifier.VERDICT_TOKENS <= 1_000, "the question and its verdict fit the context"
    assert len(shown.encode()) + len(verifier.INSTRUCTIONS.encode()) <= bound, "reserved as asked"
    assert "q" * 200 in shown and "a" * 200 in shown, "both the request and the answer are shown, cut"
    roomy = verifier.request(cascade, _endpoint("v", 1, 100_000), 100_000, "short question", answer)[1]
    assert "short question" in roomy["messages"][1]["content"] and answer in roomy["messages"][1]["content"]


def test_a_classifiers_and_a_verifiers_questions_fit_their_fallbacks_contexts():
    """Each hop now follows its fallbacks, but the classifier's and the verifier's questions were still cut
    to the hop's own context: a 10 KB ticket cut to an 8,192 context went to its 2,048 fallback, which
    refused it, and the router answered 400 to a valid request (found by review)."""
    shape = payloads.Shape(prompts=(20,), choices=1, per_choice=10)
    classifier, fallback = _endpoint("c", 1, 8_192), _endpoint("c-small", 1, 2_048)
    checker, checker_fallback = _endpoint("v", 1, 8_192), _endpoint("v-small", 1, 1_024)
    fallbacks = {"c": fallback, "v": checker_fallback}

    def chains(hop, kind, choices):
        return [hop, fallbacks[hop.name]] if hop.name in fallbacks else [hop]

    text = "word " * 2_000  # 10 KB
    assert hop_admission.asked_context(classifier, chains, {}) == 2_048
    router = Composite("router", classifier="c", table={"x": "a"}, default="a", label_tokens=4)
    found = {"c": classifier, "a": _endpoint("a", 1, 8_192), "v": checker, "s": _endpoint("s", 1, 8_192)}
    _, body = hop_prompts.classifier_request(router, classifier, 2_048, text)
    assert len(body["messages"][-1]["content"].encode()) + payloads.CHAT_TEMPLATE_TOKENS + 4 <= 2_048
    _, _, steps = composite.reservation(router, found, shape, text, chains=chains)
    assert [sorted(hop.name for hop, _ in step) for step in steps][0] == ["c", "c-small"]
    cascade = Composite("cascade", small="s", large="a", confidence="verifier", verifier="v")
    tokens_near, _, _ = composite.reservation(cascade, found, shape, text, chains=chains)
    tokens_alone, _, _ = composite.reservation(cascade, found, shape, text)
    assert tokens_near < tokens_alone, "the verifier's question is reserved as cut to its fallback's context"
    (bound,) = verifier.shape(cascade, hop_admission.asked_context(checker, chains, {}), text).prompts
    assert bound + verifier.VERDICT_TOKENS <= 1_024
