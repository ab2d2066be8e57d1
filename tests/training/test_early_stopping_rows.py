"""Early stopping keeps the adapter of the lowest eval loss: measured on the rows a run is then scored on,
it would choose the checkpoint on them. A job and ``make bench-defaults`` measure it on training rows held
back instead (``training.validation_split``), and score on the untouched eval split."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from django.utils import timezone

from benchmarks.training import defaults as bench
from portfolio.registry import artifacts, inspection
from tests.training.conftest import chat, tickets
from training import evaluation, lora, runner, services, serving_speed
from training.choices import JobStatus
from training.defaults import Hyperparameters
from training.evaluation import expected_answer
from training.models import FineTuneJob
from training.validation_split import MIN_ROWS, early_stopping_rows


def _keys(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def _demo_split() -> tuple[list[dict], list[dict]]:
    return bench.split([json.loads(line) for line in bench.DATASET.read_text().splitlines() if line.strip()])


# --- The slice itself --------------------------------------------------------------------------------------
def test_an_eighth_of_the_training_rows_is_held_back_each_class_in_its_share():
    train_rows, held_out = _demo_split()
    fit_rows, stop_rows = early_stopping_rows(train_rows, 0, patience=2)
    assert (len(fit_rows), len(stop_rows)) == (52, 8)
    assert _keys(fit_rows + stop_rows) == _keys(train_rows)
    assert not set(_keys(stop_rows)) & set(_keys(held_out))
    # The demo's 4 queues, 15 training rows each: 2 of each measure.
    assert Counter(expected_answer(row) for row in stop_rows) == Counter(
        {"billing": 2, "technical": 2, "account": 2, "shipping": 2}
    )


def test_the_slice_depends_on_the_seed_not_on_the_order_of_the_rows():
    train_rows, _ = _demo_split()
    _, stop_rows = early_stopping_rows(train_rows, 7, patience=2)
    assert _keys(early_stopping_rows(list(reversed(train_rows)), 7, patience=2)[1]) == _keys(stop_rows)
    assert _keys(early_stopping_rows(train_rows, 8, patience=2)[1]) != _keys(stop_rows)


def test_a_rare_class_still_gives_early_stopping_one_row():
    rows = [chat(f"Ticket {i}", "billing") for i in range(60)] + [
        chat(f"Parcel {i}", "shipping") for i in range(4)
    ]
    _, stop_rows = early_stopping_rows(rows, 0, patience=2)
    answers = Counter(expected_answer(row) for row in stop_rows)
    assert answers["shipping"] == 1 and answers["billing"] == 8


def test_a_label_set_is_held_back_by_label():
    rows = [{"text": f"row {i}", "label": ["spam", "ham"][i % 2]} for i in range(32)]
    _, stop_rows = early_stopping_rows(rows, 3, patience=2)
    assert Counter(row["label"] for row in stop_rows) == Counter({"spam": 2, "ham": 2})


def test_too_few_rows_or_no_early_stopping_hold_back_nothing():
    rows = tickets(MIN_ROWS - 1)
    assert early_stopping_rows(rows, 0, patience=2) == (rows, [])
    assert early_stopping_rows(tickets(40), 0, patience=0) == (tickets(40), [])
    assert early_stopping_rows(tickets(MIN_ROWS), 0, patience=2)[1]


# --- The job ----------------------------------------------------------------------------------------------
@pytest.fixture
def trained_rows(make_job, monkeypatch, tmp_path) -> dict:
    """A job run by its trainer with the training and the scoring stand-ins that record what they got."""
    seen: dict = {"train": [], "scored": []}
    monkeypatch.setattr(artifacts, "materialize_version", lambda version: tmp_path)

    def trained(*, output_dir, train_rows, eval_rows, hp, **kwargs):
        seen["train"].append({"train_rows": train_rows, "eval_rows": eval_rows, "hp": hp})
        output_dir.mkdir()
        (output_dir / "adapter_model.safetensors").write_bytes(b"weights")
        return {"train_loss_last": 0.1, "train_rows": len(train_rows)}

    def scored(*, rows, **kwargs):
        seen["scored"].append(rows)
        return {"rows": len(rows), "accuracy": 1.0}

    monkeypatch.setattr(lora, "train", trained)
    adapter = inspection.ModelFacts(format="safetensors", is_adapter=True, adapter={"r": 8})
    monkeypatch.setattr(inspection, "inspect_directory", lambda folder: adapter)
    monkeypatch.setattr(evaluation, "score", scored)
    monkeypatch.setattr(serving_speed, "serving_speed", lambda version, rows, team: {"measured": False})
    resolve = Hyperparameters.resolved

    def resolved(self, train_rows, architecture=None):
        seen["resolved_for"].append(train_rows)
        return resolve(self, train_rows, architecture)

    seen["resolved_for"] = []
    monkeypatch.setattr(Hyperparameters, "resolved", resolved)
    seen["job"] = make_job(status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now())
    return seen


def _split_files(job: FineTuneJob) -> tuple[list[dict], list[dict]]:
    files = services.dataset_files(job.training_data)
    return runner._rows(files.train), runner._rows(files.eval)


@pytest.mark.django_db
def test_a_job_stops_early_on_its_training_rows_and_is_scored_on_its_eval_split(trained_rows):
    job = trained_rows["job"]
    assert runner.run(job.pk) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.status_detail
    train_split, eval_split = _split_files(job)
    assert len(train_split) >= MIN_ROWS and eval_split
    (given,) = trained_rows["train"]
    # Never the scored rows: a slice of the training split, and trained on the rest of it only.
    assert given["eval_rows"] and not set(_keys(given["eval_rows"])) & set(_keys(eval_split))
    assert _keys(given["train_rows"] + given["eval_rows"]) == _keys(train_split)
    # The eval split scores the base and the new version, untouched.
    assert [_keys(rows) for rows in trained_rows["scored"]] == [_keys(eval_split)] * 2
    assert job.metrics["rows"] == {
        "trained": len(given["train_rows"]),
        "early_stopping": len(given["eval_rows"]),
    }
    # The defaults are chosen from the rows trained on.
    assert trained_rows["resolved_for"] == [len(given["train_rows"])]


@pytest.mark.django_db
def test_a_later_attempt_holds_back_the_same_rows(trained_rows, monkeypatch):
    job = trained_rows["job"]
    first = trained_rows["train"]

    def replaced_after_training(*, train_rows, eval_rows, hp, **kwargs):
        first.append({"train_rows": train_rows, "eval_rows": eval_rows, "hp": hp})
        raise runner.Replaced()

    monkeypatch.setattr(lora, "train", replaced_after_training)
    assert runner.run(job.pk) == 4
    FineTuneJob.objects.filter(pk=job.pk).update(attempt=2)  # the job, its hyperparameters resolved, again
    assert runner.run(job.pk) == 4
    one, two = first
    assert _keys(one["eval_rows"]) == _keys(two["eval_rows"]) and _keys(one["train_rows"]) == _keys(
        two["train_rows"]
    )
    assert one["hp"] == two["hp"]


# --- The benchmark ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "held_back"),
    [({"seed": 1}, 8), (bench.COMMON_RECIPE, 0)],
    ids=["defaults", "no-early-stopping"],
)
def test_the_benchmark_stops_early_on_its_training_rows_and_scores_the_held_out_ones(
    monkeypatch, tmp_path, values, held_back
):
    train_rows, held_out = _demo_split()
    seen: dict = {}

    def trained(*, train_rows, eval_rows, **kwargs):
        seen.update(train_rows=train_rows, eval_rows=eval_rows)
        return {"steps": 10, "steps_trained": 10, "best_eval_step": None, "train_seconds": 1.0}

    def scored(*, rows, **kwargs):
        seen["scored"] = rows
        answers = [expected_answer(row) for row in rows]
        return {"accuracy": 1.0, "confusion": {}, "answers": answers}

    monkeypatch.setattr(bench, "DATA", tmp_path)
    monkeypatch.setattr(lora, "train", trained)
    monkeypatch.setattr(evaluation, "score", scored)
    result = bench.run_once("run", tmp_path, train_rows, held_out, values)
    assert len(seen["eval_rows"]) == held_back
    assert not set(_keys(seen["eval_rows"])) & set(_keys(held_out))
    assert _keys(seen["train_rows"] + seen["eval_rows"]) == _keys(train_rows)
    assert seen["scored"] == held_out
    assert result["rows"] == {"trained": 60 - held_back, "early_stopping": held_back}
