"""A run of fewer rows than its eval set holds scores rows spread over the whole set, not its first ones (a
set written label by label gave one or two labels' accuracy); the same rows for every run of the set with
the same limit, a longer run's including a shorter one's; the side-by-side pairs answers by their row."""

from __future__ import annotations

import pytest

from tests.training.conftest import jsonl, upload
from tests.training.test_eval_runs import task as task  # noqa: F401 - the shared fixtures
from tests.training.test_eval_runs import version as version  # noqa: F401
from tests.training.test_eval_side_by_side import kept
from training.evals import catalogue, runs, sampling, side_by_side

pytestmark = pytest.mark.django_db
QUEUES = ["billing", "technical", "account", "shipping"]


def test_a_set_that_fits_is_scored_whole_in_its_order():
    assert sampling.positions(7, 7, seed=3) == list(range(7))
    assert sampling.positions(7, 200, seed=3) == list(range(7))


def test_positions_spread_nest_and_depend_only_on_the_set():
    short, long = sampling.positions(2000, 100, seed=11), sampling.positions(2000, 400, seed=11)
    assert len(short) == 100 == len(set(short)) and short == sorted(short)
    assert set(short) <= set(long), "a longer run scores the shorter one's rows too"
    assert short == sampling.positions(2000, 100, seed=11)
    assert short != sampling.positions(2000, 100, seed=12)
    quarters = [sum(q * 500 <= p < (q + 1) * 500 for p in long) for q in range(4)]
    assert all(60 <= n <= 140 for n in quarters), quarters  # 100 expected in each


def test_a_short_run_of_a_set_written_label_by_label_scores_every_label(engineer, team, labels_set):
    rows = [{"text": f"Ticket {i}: about {q}", "label": q} for q in QUEUES for i in range(20)]
    made, _ = upload(engineer, labels_set, jsonl(*rows), eval_fraction=0.1)
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Queues", kind="classification")
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=made, source="all")
    whole = runs.rows_of(eval_set, runs.MAX_ROWS)
    assert len(whole) == 80
    assert len({row["label"] for row in runs.rows_of(eval_set, 20)}) >= 3, "not the first rows of the set"
    sampled = runs.sampled_rows(eval_set, 20)
    assert len(sampled) == 20 and all(whole[position] == row for position, row in sampled)
    assert max(position for position, _ in sampled) >= 40


def test_the_side_by_side_pairs_answers_by_their_row(engineer, task):  # noqa: F811
    old = kept(task, "old", ["billing", "technical", "account", "shipping"])  # kept before rows were: 0-3
    new = kept(task, "new", [])
    asked = [(1, "technical"), (3, "shipping"), (5, "technical"), (7, "shipping")]  # a longer run's rows
    new.answers = [
        {"row": row, "prompt": f"Ticket {row}", "expected": expected, "answer": "billing", "correct": False}
        for row, expected in asked
    ]
    new.save(update_fields=["answers"])
    done = side_by_side.compare(actor=engineer, task=task, run_ids=[old.pk, new.pk])
    # Rows 2 and 4 of the set (positions 1 and 3) are the only ones both answered.
    assert sorted(row.number for row in done.rows) == [2, 4]
    by_number = {row.number: row for row in done.rows}
    assert [cell.answer for cell in by_number[2].cells] == ["technical", "billing"]
    assert [cell.answer for cell in by_number[4].cells] == ["shipping", "billing"]
    assert done.right == [2, 0]


def test_a_sample_of_a_large_set_is_read_in_one_pass(engineer, team, labels_set, monkeypatch):
    """Read a slice a row, 300 rows spread over 3,000 opened the split 300 times, each read going on from the
    nearest of every 1,024th line (2,000 of 20,000 read the file 26 times over)."""
    from pathlib import Path

    rows = [{"text": f"Ticket {i}: about {QUEUES[i % 4]}", "label": QUEUES[i % 4]} for i in range(3000)]
    made, _ = upload(engineer, labels_set, jsonl(*rows), eval_fraction=0.1)
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Queues", kind="classification")
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=made, source="all")
    whole = runs.rows_of(eval_set, 3000)
    opened: list[str] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        if self.suffix == ".jsonl":
            opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    sampled = runs.sampled_rows(eval_set, 300)
    assert len(sampled) == 300 and all(whole[position] == row for position, row in sampled)
    assert len(opened) <= 2, f"one pass over each split (train, eval), not {len(opened)} reads"
