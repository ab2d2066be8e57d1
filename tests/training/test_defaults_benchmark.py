"""`make bench-defaults` trains outside the platform: it must hold out the very rows the platform holds out
when the demo dataset is uploaded as `make bench-portfolio` uploads it, or its accuracy is on other rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.training import defaults as bench
from tests.training.conftest import upload
from training import services
from training.evaluation import expected_answer, normalise

pytestmark = pytest.mark.django_db


def _canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def _file_rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]


def test_the_benchmark_splits_the_demo_rows_as_an_upload_holding_out_a_quarter_does(engineer, chat_set):
    from benchmarks.portfolio import platform_setup

    assert bench.EVAL_FRACTION == platform_setup.EVAL_FRACTION
    content = bench.DATASET.read_bytes()
    version, _ = upload(engineer, chat_set, content, eval_fraction=bench.EVAL_FRACTION)
    files = services.dataset_files(version)
    train_rows, held_out = bench.split([json.loads(line) for line in content.splitlines()])
    assert len(held_out) == 20 and len(train_rows) == 60
    assert _canonical(_file_rows(files.eval)) == _canonical(held_out)
    assert _canonical(_file_rows(files.train)) == _canonical(train_rows)


def test_the_cross_validation_folds_hold_every_demo_row_once_with_each_label_spread_evenly():
    rows = _file_rows(bench.DATASET)
    cut = bench.folds(rows, 4)
    assert [len(fold) for fold in cut] == [20, 20, 20, 20]
    assert _canonical([row for fold in cut for row in fold]) == _canonical(rows)
    queues = {expected_answer(row) for row in rows}
    assert len(queues) == 4
    for fold in cut:
        # 20 rows of each of the 4 queues: 5 of each in every fold.
        assert sorted(expected_answer(row) for row in fold) == sorted(q for q in queues for _ in range(5))
    # The folds depend on the rows, not on their order in the file.
    assert [_canonical(fold) for fold in bench.folds(list(reversed(rows)), 4)] == [_canonical(f) for f in cut]


@pytest.mark.parametrize("k", [0, 1, 81])
def test_a_fold_count_outside_two_to_the_row_count_is_refused(k):
    with pytest.raises(ValueError, match="folds must be 2 to 80"):
        bench.folds(_file_rows(bench.DATASET), k)


def _chat(ticket: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": ticket}, {"role": "assistant", "content": answer}]}


def test_the_folds_group_answers_as_the_evaluation_compares_them():
    # "Shipping" and "shipping" are one label to the evaluation, so one label to deal round the folds: one
    # in each fold. Dealt as two labels, sorted apart ("Shipping" < "billing" < "shipping"), both would land
    # in the first fold and the second would hold out no shipping row at all.
    rows = [_chat("Where is my parcel?", "Shipping"), _chat("Charged twice", "billing")]
    rows.append(_chat("The parcel is late", "shipping"))
    cut = bench.folds(rows, 2)
    assert [sum(normalise(expected_answer(row)) == "shipping" for row in fold) for fold in cut] == [1, 1]


def test_the_misses_name_the_ticket_what_it_expected_and_what_was_answered():
    rows = [_chat("I was charged twice", "billing"), _chat("Where is my parcel?", "shipping")]
    rows.append({"text": "Reset my password", "label": "account"})
    answers = ["Billing.", "The billing queue", "no idea"]
    assert bench.misses(rows, answers) == [
        {"ticket": "Where is my parcel?", "expected": "shipping", "answered": "The billing queue"},
        {"ticket": "Reset my password", "expected": "account", "answered": "no idea"},
    ]
