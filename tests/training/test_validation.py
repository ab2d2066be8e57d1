"""Validating JSONL line by line, and splitting rows into train and eval: pure functions, no database."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest

from tests.training.conftest import chat, jsonl, tickets
from training import splitting
from training.choices import DatasetKind
from training.validation import MAX_KEPT, Report, scan


def run(content: bytes, shape: str | None = DatasetKind.CHAT, **options) -> tuple[Report, list]:
    report = Report()
    rows = list(scan(io.BytesIO(content), report, shape=shape, **options))
    return report, rows


def test_a_malformed_file_reports_each_problem_with_its_line_number():
    content = jsonl(
        chat("hello", "billing"),
        chat("hi", "technical"),
        '{"messages": [{"role": "user", "content": "broken"}',  # line 3: bad JSON
        chat("fine", "account"),
        "",  # line 5: empty
        chat("also fine", "shipping"),
        {"messages": [{"role": "user", "content": "no answer"}]},  # line 7: missing assistant
        chat("ok", "billing", system=None),
        {
            "messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]
        },  # line 9: role
    )
    report, _ = run(content)
    assert not report.ok
    assert [(e.line, e.kind) for e in report.errors] == [
        (3, "invalid_json"),
        (7, "no_assistant_answer"),
        (9, "bad_role"),
    ]
    assert "'bot'" in report.errors[2].message and "system, user or assistant" in report.errors[2].message
    assert report.empty_lines == 1 and report.empty_line_numbers == [5]
    assert report.lines == 9 and report.rows == 5
    assert str(report.errors[0]).startswith("line 3: not valid JSON")


def test_more_than_fifty_errors_keeps_fifty_and_counts_them_all():
    content = jsonl(*(["not json"] * 70), *([{"messages": []}] * 5), chat("fine", "billing"))
    report, _ = run(content)
    assert len(report.errors) == MAX_KEPT
    assert report.error_total == 75
    assert report.error_counts == Counter({"invalid_json": 70, "wrong_type": 5})
    assert "75 problems in 76 lines" in report.summary() and "first 50" in report.summary()


def test_exact_duplicates_are_dropped_and_counted_with_the_line_they_repeat():
    row = chat("I was charged twice", "billing")
    spaced = json.dumps(row, indent=None, separators=(", ", " : "))  # same content, other spacing
    report, rows = run(jsonl(row, chat("other", "account"), row, spaced))
    assert report.ok
    assert [r.line for r in rows] == [1, 2]
    assert report.duplicates == 2 and report.duplicate_lines == [(3, 1), (4, 1)]


def test_invalid_utf8_overlong_lines_and_non_objects_are_errors():
    good = jsonl(chat("fine", "billing", system=None))
    content = good + b'{"text": "caf\xe9"}\n' + b"x" * 300 + b"\n" + b"[1, 2]\n" + good
    report, rows = run(content, max_line_bytes=200)
    assert [(e.line, e.kind) for e in report.errors] == [
        (2, "invalid_utf8"),
        (3, "line_too_long"),
        (4, "not_object"),
    ]
    assert "300 bytes" in report.errors[1].message
    assert report.duplicates == 1 and len(rows) == 1


def test_a_number_too_long_to_read_is_an_error_on_its_line_not_a_crash():
    """Python reads at most 4,300 digits of an integer and raises a plain ValueError beyond, in any field."""
    good = jsonl(chat("fine", "billing", system=None))
    content = good + b'{"text": "a", "label": "b", "x": ' + b"1" * 5000 + b"}\n"
    report, rows = run(content)
    assert [(e.line, e.kind) for e in report.errors] == [(2, "invalid_json")]
    assert "a number too long to read" in report.errors[0].message and len(rows) == 1


def test_the_shape_is_detected_from_the_first_valid_row_when_not_declared():
    content = jsonl("garbage", {"prompt": "2+2=", "completion": "4"}, {"text": "hi", "label": "greeting"})
    report, rows = run(content, shape=None)
    assert report.shape == DatasetKind.COMPLETION
    assert [(e.line, e.kind) for e in report.errors] == [(1, "invalid_json"), (3, "wrong_shape")]
    assert "classification row" in report.errors[1].message
    assert rows[0].data == {"prompt": "2+2=", "completion": "4"}


def test_rows_are_normalized_to_the_fields_training_uses():
    content = jsonl(
        {"text": "refund please", "label": 3, "id": "abc"},
        {"text": "  ", "label": "x"},
        {"text": "hello", "label": True},
    )
    report, rows = run(content, shape=DatasetKind.CLASSIFICATION)
    assert rows[0].data == {"text": "refund please", "label": "3"}
    assert [(e.line, e.kind) for e in report.errors] == [(2, "empty_content"), (3, "wrong_type")]


def test_a_byte_order_mark_and_windows_line_endings_are_accepted():
    content = b"\xef\xbb\xbf" + jsonl(chat("a", "billing")).replace(b"\n", b"\r\n")
    report, rows = run(content)
    assert report.ok and len(rows) == 1


def test_the_split_is_deterministic_and_keeps_the_eval_fraction():
    rows = [json.dumps(row).encode() for row in tickets(200)]

    def split(seed):
        splitter = splitting.Splitter(seed, 0.1)
        for row in rows:
            splitter.add("", row)
        splitter.finish()
        return {row for row in rows if splitter.is_eval("", row)}

    assert split(7) == split(7)
    assert len(split(7)) == 20
    assert split(7) != split(8)


def test_classification_splits_are_stratified_by_label():
    quotas = splitting.eval_quotas({"billing": 50, "technical": 30, "account": 15, "rare": 1}, 0.2)
    assert quotas == {"billing": 10, "technical": 6, "account": 3, "rare": 0}


def _split_by_answer(rows: list[dict], fraction: float) -> tuple[splitting.Splitter, list[dict]]:
    splitter = splitting.Splitter(42, fraction)
    keyed = [(json.dumps(row).encode(), splitting.answer_of(row), row) for row in rows]
    for key, answer, _ in keyed:
        splitter.add("", key, answer)
    splitter.finish()
    return splitter, [row for key, answer, row in keyed if splitter.is_eval("", key, answer)]


def test_a_chat_set_whose_answers_are_a_few_classes_is_stratified_by_answer():
    # 36 billing, 6 technical, 3 account: a fifth of each answer to eval, never all of a rare one.
    rows = [
        chat(f"ticket {i}", queue)
        for queue, n in (("billing", 36), ("technical", 6), ("account", 3))
        for i in range(n)
    ]
    splitter, held_out = _split_by_answer(rows, 0.2)
    assert splitter.stratified_by == "answer"
    assert Counter(row["messages"][-1]["content"] for row in held_out) == {
        "billing": 7,
        "technical": 1,
        "account": 1,
    }


def test_answers_that_are_not_a_few_classes_leave_one_group():
    many = [chat(f"q {i}", f"answer {i % 21}") for i in range(84)]  # 21 distinct answers
    splitter, held_out = _split_by_answer(many, 0.1)
    # The rows counted by answer before the 21st answer came are back in the one group: 8 of 84 held out.
    assert splitter.stratified_by == "" and len(held_out) == 8
    sparse = [chat(f"q {i}", f"answer {i % 4}") for i in range(11)]  # fewer than 3 rows an answer
    assert _split_by_answer(sparse, 0.1)[0].stratified_by == ""
    long = [chat(f"q {i}", ("billing " * 13) + str(i % 2)) for i in range(40)]  # over 100 characters
    assert _split_by_answer(long, 0.1)[0].stratified_by == ""
    completions = [{"prompt": f"2+{i % 3}=", "completion": f" {2 + i % 3} "} for i in range(30)]
    assert _split_by_answer(completions, 0.1)[0].stratified_by == "answer"  # stripped answers, 3 classes


def test_stratified_quotas_add_up_to_the_fraction_of_all_rows_by_the_largest_remainders():
    # 13, 13, 12, 12 rows at a tenth: 1.3, 1.3, 1.2, 1.2 make 5 rows, not 1 + 1 + 1 + 1.
    quotas = splitting.eval_quotas({"billing": 13, "technical": 13, "account": 12, "shipping": 12}, 0.1)
    assert quotas == {"billing": 2, "technical": 1, "account": 1, "shipping": 1}
    # 8, 8, 7, 7 at a tenth: 3 rows, to the three largest remainders (ties by name).
    quotas = splitting.eval_quotas({"billing": 8, "technical": 8, "account": 7, "shipping": 7}, 0.1)
    assert quotas == {"billing": 1, "technical": 1, "account": 1, "shipping": 0}
    # A group never gives its last row, even when its remainder is the largest.
    assert splitting.eval_quotas({"a": 1, "b": 9}, 0.5) == {"a": 0, "b": 5}


def test_ten_rows_keep_at_least_one_eval_row_and_fewer_may_have_none():
    assert sum(splitting.eval_quotas({"": 10}, 0.01).values()) == 1
    assert sum(splitting.eval_quotas({"a": 5, "b": 5}, 0.05).values()) == 1
    assert sum(splitting.eval_quotas({"": 9}, 0.01).values()) == 0
    assert sum(splitting.eval_quotas({"": 100}, 0).values()) == 0


# --- Every field of every shape is checked: a row that is not what training reads is a line-numbered error --
GOOD = {
    DatasetKind.CHAT: chat("I was charged twice", "billing", system=None),
    DatasetKind.COMPLETION: {"prompt": "2+2=", "completion": "4"},
    DatasetKind.CLASSIFICATION: {"text": "refund please", "label": "billing"},
}
ANSWER = {"role": "assistant", "content": "billing"}


def _chat_with(message) -> dict:
    return {"messages": [message, ANSWER]}


WRONG_ROWS = [
    # chat
    (
        DatasetKind.CHAT,
        _chat_with({"role": "user", "content": None}),
        "wrong_type",
        "messages[0].content must be a string, not null",
    ),
    (
        DatasetKind.CHAT,
        _chat_with({"role": "user", "content": 42}),
        "wrong_type",
        "messages[0].content must be a string, not a number",
    ),
    (
        DatasetKind.CHAT,
        _chat_with({"role": "user", "content": ["part", "another"]}),
        "wrong_type",
        "messages[0].content must be a string, not a list",
    ),
    (
        DatasetKind.CHAT,
        _chat_with({"role": "user", "content": {"text": "hi"}}),
        "wrong_type",
        "messages[0].content must be a string, not an object",
    ),
    (
        DatasetKind.CHAT,
        _chat_with({"role": "user", "content": True}),
        "wrong_type",
        "messages[0].content must be a string, not a boolean",
    ),
    (DatasetKind.CHAT, _chat_with({"role": "user"}), "missing_field", "messages[0].content is missing"),
    (
        DatasetKind.CHAT,
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
        "missing_field",
        "messages[1].content is missing",
    ),
    (
        DatasetKind.CHAT,
        _chat_with({"content": "hi"}),
        "bad_role",
        "messages[0].role is missing; use system, user or assistant",
    ),
    (DatasetKind.CHAT, _chat_with("hi"), "wrong_type", "messages[0] must be an object, not a string"),
    (
        DatasetKind.CHAT,
        {"messages": None},
        "wrong_type",
        "messages must be a non-empty list of {role, content} objects",
    ),
    (
        DatasetKind.CHAT,
        {"messages": "hi"},
        "wrong_type",
        "messages must be a non-empty list of {role, content} objects",
    ),
    (
        DatasetKind.CHAT,
        {"prompt": "hi", "completion": "there"},
        "wrong_shape",
        "a completion row (prompt/completion), but this dataset holds chat rows (messages)",
    ),
    # prompt / completion
    (DatasetKind.COMPLETION, {"prompt": "2+2="}, "missing_field", "completion is missing"),
    (DatasetKind.COMPLETION, {"completion": "4"}, "missing_field", "prompt is missing"),
    (
        DatasetKind.COMPLETION,
        {"prompt": None, "completion": "4"},
        "wrong_type",
        "prompt must be a string, not null",
    ),
    (
        DatasetKind.COMPLETION,
        {"prompt": ["2+2="], "completion": "4"},
        "wrong_type",
        "prompt must be a string, not a list",
    ),
    (
        DatasetKind.COMPLETION,
        {"prompt": "2+2=", "completion": 4},
        "wrong_type",
        "completion must be a string, not a number",
    ),
    (
        DatasetKind.COMPLETION,
        {"prompt": "2+2=", "completion": None},
        "wrong_type",
        "completion must be a string, not null",
    ),
    (DatasetKind.COMPLETION, {"prompt": "2+2=", "completion": " "}, "empty_content", "completion is empty"),
    # text / label
    (DatasetKind.CLASSIFICATION, {"label": "billing"}, "missing_field", "text is missing"),
    (DatasetKind.CLASSIFICATION, {"text": "refund"}, "missing_field", "label is missing"),
    (
        DatasetKind.CLASSIFICATION,
        {"text": None, "label": "billing"},
        "wrong_type",
        "text must be a string, not null",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": 12, "label": "billing"},
        "wrong_type",
        "text must be a string, not a number",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": ["a"], "label": "billing"},
        "wrong_type",
        "text must be a string, not a list",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": "refund", "label": None},
        "wrong_type",
        "label must be a string or an integer, not null",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": "refund", "label": ["billing"]},
        "wrong_type",
        "label must be a string or an integer, not a list",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": "refund", "label": 1.5},
        "wrong_type",
        "label must be a string or an integer, not a number",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": "refund", "label": {"name": "billing"}},
        "wrong_type",
        "label must be a string or an integer, not an object",
    ),
    (
        DatasetKind.CLASSIFICATION,
        {"text": "refund", "label": "x" * 101},
        "wrong_type",
        "label is longer than 100 characters",
    ),
]


@pytest.mark.parametrize(
    ("shape", "row", "kind", "message"), WRONG_ROWS, ids=[f"{s}-{m}" for s, _, _, m in WRONG_ROWS]
)
def test_a_row_with_a_missing_or_mistyped_field_is_an_error_on_its_line(shape, row, kind, message):
    other = {key: value for key, value in GOOD[shape].items()}
    report, rows = run(jsonl(GOOD[shape], row, {**other, "extra": 1}), shape=shape)
    assert [(e.line, e.kind, e.message) for e in report.errors] == [(2, kind, message)]
    assert not report.ok and [r.line for r in rows] == [1]  # line 3 repeats line 1 once normalized
    assert report.duplicates == 1


# JSON can spell what is not text: a lone UTF-16 surrogate (no UTF-8 for it) and NUL (PostgreSQL refuses it).
UNSTORABLE_ROWS = [
    (
        DatasetKind.CHAT,
        '{"messages": [{"role": "user", "content": "caf\\ud800"}, ' + json.dumps(ANSWER) + "]}",
        "invalid_unicode",
        "messages[0].content holds a lone UTF-16 surrogate (\\ud800 at character 4)",
    ),
    (
        DatasetKind.CHAT,
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "\\udfff billing"}]}',
        "invalid_unicode",
        "messages[1].content holds a lone UTF-16 surrogate (\\udfff at character 1)",
    ),
    (
        DatasetKind.COMPLETION,
        '{"prompt": "\\ud83d", "completion": "4"}',
        "invalid_unicode",
        "prompt holds a lone UTF-16 surrogate (\\ud83d at character 1)",
    ),
    (
        DatasetKind.COMPLETION,
        '{"prompt": "2+2=", "completion": "4\\ud800"}',
        "invalid_unicode",
        "completion holds a lone UTF-16 surrogate (\\ud800 at character 2)",
    ),
    (
        DatasetKind.CLASSIFICATION,
        '{"text": "\\udc00", "label": "billing"}',
        "invalid_unicode",
        "text holds a lone UTF-16 surrogate (\\udc00 at character 1)",
    ),
    (
        DatasetKind.CLASSIFICATION,
        '{"text": "refund", "label": "bill\\ud800ing"}',
        "invalid_unicode",
        "label holds a lone UTF-16 surrogate (\\ud800 at character 5)",
    ),
    (
        DatasetKind.COMPLETION,
        '{"prompt": "2+2=\\u0000", "completion": "4"}',
        "control_character",
        "prompt holds a NUL character (\\u0000 at character 5)",
    ),
    (
        DatasetKind.CLASSIFICATION,
        '{"text": "refund", "label": "a\\u0000b"}',
        "control_character",
        "label holds a NUL character (\\u0000 at character 2)",
    ),
    (
        DatasetKind.CLASSIFICATION,
        '{"text": "refund", "label": "bill\\ning"}',
        "control_character",
        "label holds a control character (U+000A)",
    ),
]


@pytest.mark.parametrize(
    ("shape", "line", "kind", "message"), UNSTORABLE_ROWS, ids=[m for _, _, _, m in UNSTORABLE_ROWS]
)
def test_text_that_is_not_unicode_or_cannot_be_stored_is_an_error_on_its_line(shape, line, kind, message):
    report, rows = run(jsonl(GOOD[shape], line), shape=shape)
    assert [(e.line, e.kind) for e in report.errors] == [(2, kind)]
    assert report.errors[0].message.startswith(message), report.errors[0].message
    assert [r.line for r in rows] == [1]


def test_a_surrogate_pair_is_one_character_and_is_accepted():
    report, rows = run(
        jsonl('{"prompt": "smile \\ud83d\\ude00", "completion": "ok"}'), shape=DatasetKind.COMPLETION
    )
    assert report.ok and rows[0].data["prompt"] == "smile \U0001f600"


def test_a_classification_set_of_more_than_a_thousand_labels_is_refused():
    """A label is a class: a file of a million distinct labels (40 MB) used to be accepted, its labels kept
    with the version, sent whole with every read of it and drawn as a million bars on its page."""
    content = jsonl(*({"text": f"row {n}", "label": f"label-{n}"} for n in range(1_001)))
    report, rows = run(content, DatasetKind.CLASSIFICATION)
    assert not report.ok and [(e.line, e.kind) for e in report.errors] == [(1_001, "too_many_labels")]
    assert len(report.labels) == 1_000 and len(rows) == 1_000


def test_an_upload_of_more_rows_than_a_worker_should_hold_is_refused(monkeypatch):
    """Every row's fingerprint and split score stay in memory while the file is read (about 200 bytes a
    row): 2 GiB of short rows needed 13 GB on a control worker. The scan stops at the limit, refused."""
    from training import validation

    monkeypatch.setattr(validation, "MAX_ROWS", 3)
    report, rows = run(jsonl(*(chat(f"ticket {n}", "billing") for n in range(10))))
    assert not report.ok and [(e.line, e.kind) for e in report.errors] == [(4, "too_many_rows")]
    assert len(rows) == 3 and report.lines == 4, "reading stopped there"
