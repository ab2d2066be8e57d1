"""Validating JSONL line by line, and splitting rows into train and eval: pure functions, no database."""

from __future__ import annotations

import io
import json
from collections import Counter

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


def test_ten_rows_keep_at_least_one_eval_row_and_fewer_may_have_none():
    assert sum(splitting.eval_quotas({"": 10}, 0.01).values()) == 1
    assert sum(splitting.eval_quotas({"a": 5, "b": 5}, 0.05).values()) == 1
    assert sum(splitting.eval_quotas({"": 9}, 0.01).values()) == 0
    assert sum(splitting.eval_quotas({"": 100}, 0).values()) == 0
