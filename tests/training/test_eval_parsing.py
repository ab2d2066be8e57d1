"""Reading answers and judges' replies as numbers, in the shapes that misled them: a label inside a longer
word, an expected answer inside a longer number, typographic quotes and Unicode forms, a range read as a
score, a score ending a sentence, a reasoning model's bare ``</think>``, and "N/5" off the prompt's 1-5
scale. Pure functions, no database."""

from __future__ import annotations

import pytest

from training.evals import judging
from training.evaluation import answer_metrics, contains, label_pairs, normalise, predicted_label


# --- labels and containment: whole words only ---------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ("i don't know", "i don't know"),  # not "no" (kno-w)
        ("unknown", "unknown"),  # not "no" (unkno-wn)
        ("not sure", "not sure"),  # not "no" (no-t)
        ("no, it is not", "no"),
        ("well, yes", "yes"),
        ("yes or no", "yes"),  # still the first mentioned
    ],
)
def test_a_label_is_named_only_as_a_whole_word(answer, named):
    assert predicted_label(answer, {"yes", "no"}) == named


def test_answers_that_name_no_label_are_not_counted_right_by_a_label_inside_a_word():
    metrics = answer_metrics(["no", "yes", "no", "yes"], ["I don't know", "Not sure", "Unknown", "Yes."])
    assert metrics["accuracy"] == 0.25
    assert label_pairs(["no"], ["Unknown"]) == [("no", "unknown")]


def test_a_label_with_punctuation_at_its_ends_is_still_found_next_to_words():
    assert predicted_label("queue:(other)", {"(other)", "billing"}) == "(other)"


@pytest.mark.parametrize(
    ("answer", "expected", "said"),
    [
        ("12", "2", False),
        ("2 apples", "2", True),
        ("comparison", "paris", False),
        ("it is paris", "paris", True),
        ("about 3.5%", "3.5", True),
        ("c++ and rust", "c++", True),  # no word character at its end: no boundary asked there
        ("anything", "", False),
    ],
)
def test_an_expected_answer_is_contained_only_as_whole_words(answer, expected, said):
    assert contains(answer, expected) is said


def test_containment_in_the_metrics_needs_whole_words():
    assert answer_metrics(["2", "paris"], ["12", "comparison"])["contains"] == 0.0


# --- normalisation: typographic quotes and Unicode forms ------------------------------------------------
@pytest.mark.parametrize("quoted", ["“Paris”", "‘Paris’", "«Paris»", "„Paris“", '"Paris"'])
def test_typographic_quotes_do_not_count_as_straight_ones_do_not(quoted):
    assert normalise(quoted) == "paris"


def test_composed_and_decomposed_letters_are_the_same_answer():
    assert normalise("Café") == normalise("cafe\u0301")
    assert answer_metrics(["café"], ["cafe\u0301"])["exact_match"] == 1.0
    assert answer_metrics(["ACME Corp"], ["“ACME Corp”"])["exact_match"] == 1.0


# --- a judge's reply ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "read"),
    [
        # Ranges, whatever their dash or word, are not scores.
        ("On a scale of 1 to 5, I'd give 2.", 0.25),
        ("Score (1–5): 2", 0.25),
        ("Score (1—5): 2", 0.25),
        ("Score (1-5): 2", 0.25),
        ("Score: 2 (on 1-5)", 0.25),
        ("1 to 5: 4", 0.75),
        # A score that ends a sentence.
        ("Score: 3.", 0.5),
        ("4.", 0.75),
        ("I give it a 4. It names 2 of the 3 facts.", 0.75),
        # A reasoning model's reply, its <think> in the prompt: only what follows "</think>" is the verdict.
        ("Okay, the reference lists 3 steps and the answer gives 2 of them.\n</think>\n\n4", 0.75),
        ("<think>maybe 5</think>3", 0.5),
        ("<think>a 1?</think> no, </think> 5", 1.0),
        # "/ 5" and "out of 5" are the prompt's 1-5 scale; other scales are as they say.
        ("1/5", 0.0),
        ("3/5", 0.5),
        ("5/5.", 1.0),
        ("2 out of 5", 0.25),
        ("0/5", 0.0),
        ("8/10", 0.8),
        ("7 out of 10", 0.7),
        ("1.0", 0.0),  # the 1-5 scale's worst grade, as the prompt asks (it read as a 0-1 rubric's top)
    ],
)
def test_a_judges_reply_in_a_misleading_shape_is_read_as_its_score(reply, read):
    assert judging.score(reply) == pytest.approx(read)


def test_a_judge_mixing_n_over_5_and_bare_n_scores_on_one_scale():
    for n in "12345":
        assert judging.score(f"{n}/5") == judging.score(n) == judging.score(f"Score: {n} out of 5")


@pytest.mark.parametrize(
    "reply",
    ["1–5", "1 to 5", "<think>The reference lists 3 steps and the answer", "</think>\n\n<think>4", "6/5"],
)
def test_a_range_or_reasoning_cut_off_is_unreadable(reply):
    assert judging.score(reply) is None
