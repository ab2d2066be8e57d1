"""Eval scoring, exactly: how generated answers compare with the expected ones (exact match, containment,
the label an answer names, accuracy, F1 per label), with no model; pure functions, no database. Last, once,
``score`` on a tiny random model, to show generation feeds that same comparison."""

from __future__ import annotations

import pytest

from training.evaluation import (
    OTHER,
    answer_metrics,
    expected_answer,
    f1_by_label,
    predicted_label,
    prompt_messages,
)


def test_case_whitespace_and_surrounding_punctuation_do_not_count():
    metrics = answer_metrics(
        ["Billing", "technical", "The capital of France is Paris."],
        ["  billing.\n", "It is a TECHNICAL issue!", "the capital of \t france is paris"],
    )
    assert metrics == {
        "rows": 3,
        "exact_match": pytest.approx(2 / 3),
        "contains": 1.0,
        "accuracy": 1.0,  # the second answer names the label "technical"
        "f1_by_label": {"billing": 1.0, "technical": 1.0, "the capital of france is paris": 1.0},
        "label_counts": {"billing": 1, "technical": 1, "the capital of france is paris": 1},
        "confusion": {
            "billing": {"billing": 1},
            "technical": {"technical": 1},
            "the capital of france is paris": {"the capital of france is paris": 1},
        },
    }


def test_inner_punctuation_and_other_words_do_count_for_exact_match():
    metrics = answer_metrics(["billing", "account"], ["billing: yes", '"Account"'])
    assert (metrics["exact_match"], metrics["contains"]) == (0.5, 1.0)


def test_accuracy_and_f1_per_label_count_each_label_exactly():
    expected = ["billing", "billing", "billing", "shipping", "shipping", "account"]
    answers = ["billing", "shipping", "Billing.", "shipping", "I don't know", "billing"]
    metrics = answer_metrics(expected, answers)
    # billing: 2 right, 1 missed (as shipping), 1 taken from account -> P 2/3, R 2/3.
    # shipping: 1 right, 1 missed (an answer naming no label), 1 taken from billing -> P 1/2, R 1/2.
    # account: never predicted -> 0.
    assert metrics["f1_by_label"] == {
        "account": 0.0,
        "billing": pytest.approx(2 / 3),
        "shipping": pytest.approx(0.5),
    }
    assert (metrics["accuracy"], metrics["exact_match"], metrics["contains"]) == (0.5, 0.5, 0.5)
    assert metrics["label_counts"] == {"billing": 3, "shipping": 2, "account": 1}
    # Where each label's rows went: the misses by what was answered, an answer naming no label as OTHER.
    assert metrics["confusion"] == {
        "account": {"billing": 1},
        "billing": {"billing": 2, "shipping": 1},
        "shipping": {OTHER: 1, "shipping": 1},
    }


def test_an_answer_naming_no_label_is_a_miss_even_of_a_label_written_like_the_catch_all_column():
    # A task may well have a queue called "other" or "(other)"; what names no label is not its hit.
    pairs = ["(other)", "(Other)", "(other)", "billing"], ["(other)", "(OTHER).", "refund", "billing"]
    metrics = answer_metrics(*pairs)
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion"] == {"(other)": {"(other)": 2, OTHER: 1}, "billing": {"billing": 1}}

    from training.views.evals import confusion_table

    table = confusion_table(metrics["confusion"])
    assert table["columns"] == ["(other)", "billing", OTHER]
    assert [[(c["count"], c["tone"]) for c in row["cells"]] for row in table["rows"]] == [
        [(2, "hit"), (0, ""), (1, "miss")],
        [(0, ""), (1, "hit"), (0, "")],
    ]


def test_an_answer_naming_no_known_label_is_wrong_for_its_row_and_credits_no_label():
    metrics = answer_metrics(["billing", "shipping"], ["refund", "sports"])
    assert metrics["accuracy"] == 0.0
    assert metrics["f1_by_label"] == {"billing": 0.0, "shipping": 0.0}
    assert set(metrics["f1_by_label"]) == {"billing", "shipping"}, "unknown answers are not labels"


def test_f1_of_a_label_is_precision_and_recall_balanced():
    pairs = [("a", "a"), ("a", "a"), ("a", "a"), ("b", "a"), ("b", "b"), ("a", "b")]
    # a: tp 3, fp 1, fn 1 -> P 3/4, R 3/4; b: tp 1, fp 1, fn 1 -> P 1/2, R 1/2.
    assert f1_by_label(pairs) == {"a": pytest.approx(0.75), "b": pytest.approx(0.5)}


@pytest.mark.parametrize(
    ("answer", "labels", "named"),
    [
        ("billing", {"bill", "billing"}, "billing"),  # the answer is a label
        ("billing issue", {"bill", "billing"}, "billing"),  # same place: the longest
        ("account, then billing", {"billing", "account"}, "account"),  # the first mentioned
        ("it is about billing or account", {"account", "billing"}, "billing"),
        ("refund", {"billing", ""}, "refund"),  # an empty label is in every text: never matched inside one
        ("", {"billing", ""}, ""),
        ("no idea", {"billing"}, "no idea"),
    ],
)
def test_the_label_an_answer_names_is_chosen_the_same_way_every_time(answer, labels, named):
    assert predicted_label(answer, labels) == named
    assert predicted_label(answer, sorted(labels, reverse=True)) == named  # whatever the order of the labels


def test_no_rows_give_no_score_rather_than_zero():
    assert answer_metrics([], []) == {"rows": 0, "exact_match": None, "contains": None}


def test_answers_and_rows_must_pair_up():
    with pytest.raises(ValueError, match="1 answers for 2 rows"):
        answer_metrics(["a", "b"], ["a"])


def test_an_expected_answer_that_normalises_to_nothing_is_contained_in_no_answer():
    metrics = answer_metrics([".", "."], ["...", "anything"])
    assert (metrics["exact_match"], metrics["contains"]) == (0.5, 0.0)


def test_label_metrics_only_when_the_expected_answers_are_few_distinct_values():
    free_text = [f"answer number {i}" for i in range(21)]
    assert "accuracy" not in answer_metrics(free_text, free_text)  # 21 distinct of 21: not labels
    labels = free_text * 3  # 21 distinct of 63: at most a third, so labels
    metrics = answer_metrics(labels, labels)
    assert metrics["accuracy"] == 1.0 and len(metrics["f1_by_label"]) == 21
    assert "accuracy" in answer_metrics(free_text[:20], free_text[:20])  # up to 20 distinct always are


def test_the_expected_answer_and_the_prompt_of_each_row_shape():
    chat = {
        "messages": [
            {"role": "system", "content": "Route."},
            {"role": "user", "content": "Charged twice"},
            {"role": "assistant", "content": "billing"},
        ]
    }
    assert (expected_answer(chat), prompt_messages(chat)) == ("billing", chat["messages"][:2])
    completion = {"prompt": "2+2=", "completion": "4"}
    assert (expected_answer(completion), prompt_messages(completion)) == (
        "4",
        [{"role": "user", "content": "2+2="}],
    )
    labelled = {"text": "refund please", "label": 3}
    assert (expected_answer(labelled), prompt_messages(labelled)) == (
        "3",
        [{"role": "user", "content": "refund please"}],
    )


# --- score(): generation on a real (tiny, random) model feeds the same comparison -------------------------
def test_score_generates_an_answer_per_row_and_compares_them_as_answer_metrics_does(tiny_llama, monkeypatch):
    from training import evaluation

    rows = [
        {
            "messages": [
                {"role": "user", "content": "I was charged twice"},
                {"role": "assistant", "content": "billing"},
            ]
        },
        {"prompt": "The parcel never came:", "completion": "shipping"},
    ]
    compared = []
    real = evaluation.answer_metrics
    monkeypatch.setattr(evaluation, "answer_metrics", lambda e, a: compared.append((e, a)) or real(e, a))
    metrics = evaluation.score(base_dir=tiny_llama, adapter_dir=None, rows=rows, max_new_tokens=4)
    ((expected, answers),) = compared
    assert (
        expected == ["billing", "shipping"] and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    )
    assert {key: value for key, value in metrics.items() if key != "perplexity"} == real(expected, answers)
    assert metrics["rows"] == 2 and metrics["perplexity"] > 1.0
    assert "answers" not in metrics  # a job stores the metrics, not every answer
    kept = evaluation.score(
        base_dir=tiny_llama, adapter_dir=None, rows=rows, max_new_tokens=4, keep_answers=True
    )
    assert kept["answers"] == answers  # greedy: the same answers again, in the rows' order


def test_score_is_bounded_in_rows_and_in_each_prompts_tokens(tiny_llama, monkeypatch):
    """A job scores its held-out rows on the node it holds: rows past the cap are not scored (and counted),
    and a prompt of a 1 MiB row keeps only its last tokens, where its question is."""
    from transformers import LlamaForCausalLM

    from training import evaluation

    monkeypatch.setattr(evaluation, "MAX_SCORED_ROWS", 2)
    monkeypatch.setattr(evaluation, "MAX_PROMPT_TOKENS", 8)
    lengths = []
    real_generate = LlamaForCausalLM.generate

    def generate(self, *args, **kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", generate)
    rows = [{"prompt": "the parcel never came " * 50, "completion": "shipping"} for _ in range(3)]
    metrics = evaluation.score(base_dir=tiny_llama, adapter_dir=None, rows=rows, max_new_tokens=2)
    assert lengths == [8, 8]
    assert metrics["rows"] == 2 and metrics["rows_not_scored"] == 1


def _generation_spy(monkeypatch, model_class) -> list[dict]:
    """The input length and token budget of each ``generate`` call of ``model_class``."""
    calls: list[dict] = []
    real_generate = model_class.generate

    def generate(self, *args, **kwargs):
        calls.append({"prompt": kwargs["input_ids"].shape[1], "budget": kwargs["max_new_tokens"]})
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "generate", generate)
    return calls


def test_an_answer_longer_than_the_default_budget_may_be_generated_whole(tiny_llama, monkeypatch):
    """Before, every answer was cut at 16 tokens: a summary's or an extraction's expected answer of 40 could
    never match, so base and tuned version alike scored 0 and no promotion saw a regression."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from training import evaluation

    calls = _generation_spy(monkeypatch, LlamaForCausalLM)
    long_answer = " ".join(f"clause {i} applies" for i in range(20))
    rows = [
        {"prompt": "Summarise the contract:", "completion": long_answer},
        {"prompt": "Route it:", "completion": "billing"},
    ]
    evaluation.score(base_dir=tiny_llama, adapter_dir=None, rows=rows)
    answer_tokens = len(
        AutoTokenizer.from_pretrained(tiny_llama)(long_answer, add_special_tokens=False).input_ids
    )
    assert answer_tokens > 16
    assert calls[0]["budget"] == answer_tokens + evaluation.ANSWER_SLACK
    assert calls[1]["budget"] == 16  # a label keeps the default


def test_a_completion_row_with_an_empty_prompt_is_scored(tiny_llama):
    """Validation accepts ``"prompt": ""``; scoring read the row's ``text`` instead (KeyError), and the job
    recorded no eval run for either version."""
    from training import evaluation

    metrics = evaluation.score(
        base_dir=tiny_llama, adapter_dir=None, rows=[{"prompt": "", "completion": "yes"}], max_new_tokens=2
    )
    assert metrics["rows"] == 1 and metrics["perplexity"] > 1.0


def test_prompt_answer_and_generation_fit_in_a_base_of_few_positions(tiny_llama, tmp_path, monkeypatch):
    """A base with learned position embeddings (GPT-2's 1,024, OPT's 2,048) indexed past its table on a long
    held-out row (the ingest flags such rows, it does not refuse them): the whole scoring step failed."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from training import evaluation

    base = tmp_path / "gpt2-like"
    shutil.copytree(tiny_llama, base)
    (base / "config.json").unlink()
    for weights in base.glob("*.safetensors"):
        weights.unlink()
    config = GPT2Config(vocab_size=49152, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(base)
    calls = _generation_spy(monkeypatch, GPT2LMHeadModel)
    rows = [{"prompt": "the parcel never came " * 40, "completion": "it was lost " * 30}]
    metrics = evaluation.score(base_dir=base, adapter_dir=None, rows=rows)
    assert metrics["rows"] == 1 and metrics["perplexity"] > 1.0
    assert calls[0]["prompt"] + calls[0]["budget"] <= 64
